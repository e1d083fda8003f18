"""InstructGPT's three steps on the toy preference problem (the InstructGPT page): instructgpt_rlhf.svg (the reward
model against the true reward with its standard errors; PPO's distance to the optimum of its reward model and to
the optimum of the true reward, per iteration) and instructgpt_repro.md (the paper's claims beside our measurements)."""

from pathlib import Path

from matplotlib.ticker import NullFormatter, StrMethodFormatter
import torch
import torch.nn.functional as F

from refimpl import preferences, rlhf
from refimpl.plots import save, subplots

PAGE = "llm/instructgpt.md"
OUTPUTS = ("instructgpt_rlhf.svg", "instructgpt_repro.md")
SEED = 0


def make(out: Path, preset: str) -> None:
    torch.set_num_threads(1)  # tables of a few numbers: more threads only add synchronisation
    sizes, settings, beta = preferences.SIZES[preset], rlhf.PPO_SETTINGS[preset], preferences.BETA
    task = preferences.make_task(sizes["prompts"], sizes["responses"], SEED)
    generator = torch.Generator().manual_seed(SEED)  # the draws of rlhf.sft_and_comparisons, the CLI and the tests
    x, y = preferences.sample_demonstrations(task, sizes["demonstrations"], generator)
    sft_logits = rlhf.sft(x, y, task.prompts, task.responses)
    data = preferences.sample_comparisons(task, F.log_softmax(sft_logits, dim=1), sizes["comparisons"], generator)
    reward_model = rlhf.fit_reward_model(data, task.prompts, task.responses)
    ref = F.log_softmax(sft_logits, dim=1)
    star = preferences.optimal_policy(ref, task.reward, beta)
    star_hat = preferences.optimal_policy(ref, reward_model, beta)
    curves = {"hat": [preferences.kl(ref, star_hat).mean().item()], "true": [preferences.kl(ref, star).mean().item()]}

    def record(it, theta):
        logp = F.log_softmax(theta, dim=1)
        curves["hat"].append(preferences.kl(logp, star_hat).mean().item())
        curves["true"].append(preferences.kl(logp, star).mean().item())

    ppo_logp = F.log_softmax(rlhf.ppo(sft_logits, reward_model, beta, generator=generator, callback=record,
                                      **settings), dim=1)
    cov = preferences.bradley_terry_covariance(task.reward, data)
    statistical = preferences.predicted_kl(star, cov, beta).mean().item()
    truth = preferences.centred(task.reward)
    se = torch.diagonal(cov, dim1=1, dim2=2).sqrt()

    fig, (left, right) = subplots(1, 2, figsize=(7.0, 3.4))
    for prompt in range(task.prompts):
        left.errorbar(truth[prompt], reward_model[prompt], yerr=2 * se[prompt], fmt="o", ms=4, capsize=2, lw=1,
                      label=f"提示 {prompt + 1}")
    span = float(truth.abs().max()) * 1.15
    left.plot([-span, span], [-span, span], color="0.5", lw=1, ls=":")
    left.set(xlabel="真实奖励 r（逐提示中心化）", ylabel="奖励模型 r̂（±2 个标准误差）", title="步骤 2：奖励模型")
    left.legend(fontsize=8, loc="upper left", handletextpad=0.2, borderaxespad=0.2)
    steps = range(len(curves["hat"]))
    right.semilogy(steps, curves["hat"], color="C0", label="到 π*(r̂)：PPO 的目标")
    right.semilogy(steps, curves["true"], color="C1", label="到 π*(r)：真实奖励的最优")
    right.axhline(statistical, color="C1", lw=1, ls="--", label="有限比较留下的期望误差")
    right.set(xlabel="PPO 迭代（每次采样一批、更新 4 步）", ylabel="KL(π ‖ 目标)，各提示平均",
              title="步骤 3：PPO")
    right.yaxis.set_major_formatter(StrMethodFormatter("{x:g}"))  # 10^-2 would set its exponent in 7 pt
    right.yaxis.set_minor_formatter(NullFormatter())
    right.legend(fontsize=8, loc="lower left", borderaxespad=0.2)
    fig.tight_layout()
    save(fig, out / "instructgpt_rlhf.svg")

    counts = torch.zeros_like(ref).index_put_((x, y), torch.ones(len(x), dtype=ref.dtype), accumulate=True)
    empirical = counts / counts.sum(dim=1, keepdim=True)
    flat = torch.full_like(cov[0], 1 / task.responses)
    stat = sum(float(e @ (torch.linalg.inv(c + flat) - flat) @ e) for e, c in zip(reward_model - truth, cov))
    dof = task.prompts * (task.responses - 1)
    got, best, start = (preferences.measure(p, ref, star, task.reward) for p in (ppo_logp, star, ref))
    rows = [
        ("玩具问题", "GPT-3 上微调；提示来自 OpenAI API 与标注员",
         f"{task.prompts} 个提示 × {task.responses} 个完整回答的表格策略；示范每提示 {sizes['demonstrations']} 条，"
         f"比较每提示 {sizes['comparisons']} 对，β = {beta:g}（{preset} 预设）", "—"),
        ("步骤 1：SFT", "在标注员示范上有监督微调（16 个 epoch）",
         f"与示范经验频率之差最大 {(ref.exp() - empirical).abs().max().item():.1e}",
         "闭式：表格策略的最大似然就是经验频率"),
        ("步骤 2：奖励模型", "式 (1)：每个提示 K = 4–9 个回答排序，得 C(K,2) 个比较",
         f"r̂ 与真实 r 之差最大 {(reward_model - truth).abs().max().item():.3f}，"
         f"合 {((reward_model - truth).abs() / se).max().item():.1f} 个标准误差；χ² 统计量 {stat:.1f}（自由度 {dof}）",
         f"若误差只来自有限的比较：χ²({dof})，均值 {dof}、标准差 {(2 * dof) ** 0.5:.1f}"),
        ("步骤 3：PPO 到它的目标 π*(r̂)", "式 (2) 用 PPO 优化（β = 0.02）",
         f"KL(π_PPO ‖ π*(r̂)) = {curves['hat'][-1]:.1e}（{settings['iterations']} 次迭代）",
         f"出发点 SFT：{curves['hat'][0]:.3f}"),
        ("PPO 到真实最优 π*(r)", "—", f"KL(π_PPO ‖ π*(r)) = {curves['true'][-1]:.4f}",
         f"有限比较留下的期望误差 {statistical:.4f}"),
        ("偏好", "摘要：1.3B 参数的 InstructGPT 的输出比 175B 的 GPT-3 更受人偏好",
         f"对 SFT 的胜率 {got['win']:.3f}，E[r] 从 {start['reward']:+.3f} 升到 {got['reward']:+.3f}",
         f"π* 的胜率 {best['win']:.3f}、E[r] {best['reward']:+.3f}"),
    ]
    lines = ["| 项目 | 论文报告 | 我们测得 | 参照 |", "| --- | --- | --- | --- |"]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    (out / "instructgpt_repro.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
