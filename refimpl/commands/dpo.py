"""``python -m refimpl dpo ...``: DPO on the toy preference problem, and DPO against InstructGPT's PPO route on the
same comparisons."""

from __future__ import annotations

import torch.nn.functional as F

from refimpl import checkpoint, dpo, preferences, rlhf
from refimpl.commands.rlhf import (add_ppo, add_problem, add_run, covariance, describe, prepare, refuse_other_run,
                                   run_ppo, settings)

MODEL = "dpo"


def add_commands(commands) -> None:
    """``python -m refimpl dpo train|compare``."""
    cmd = commands.add_parser("train", help="DPO on a toy preference problem (the same data as `rlhf train` at the "
                                            "same seed); prints how close the policy gets to pi*")
    add_problem(cmd)
    cmd.add_argument("--out", required=True, help="output directory (the policy tables, safetensors + config.json)")
    add_run(cmd)
    cmd.set_defaults(run=_run_train)
    cmd = commands.add_parser("compare", help="reward model + PPO and DPO on the same comparisons, both against pi*")
    add_problem(cmd)
    add_ppo(cmd)
    add_run(cmd)
    cmd.set_defaults(run=_run_compare)


def _run_train(args) -> int:
    config = settings(args)
    refuse_other_run(args.out, MODEL)
    task, sft_logits, data, _ = prepare(config)
    logits = dpo.train_dpo(sft_logits, data, config["beta"])
    ref = F.log_softmax(sft_logits, dim=1)
    star = preferences.optimal_policy(ref, task.reward, config["beta"])
    cov = covariance(task, data)
    print(f"{task.prompts} prompts x {task.responses} responses, {len(data)} labelled comparisons, "
          f"beta {config['beta']:g}; final DPO loss {dpo.dpo_loss(logits, ref, data, config['beta']):.4f}")
    for name, logp in (("SFT (pi_ref)", ref), ("DPO", F.log_softmax(logits, dim=1)), ("pi*", star)):
        print(describe(name, preferences.measure(logp, ref, star, task.reward)))
    print("expected KL(pi_DPO || pi*) from the finite comparisons alone: " + (
        "none (some responses were never compared)" if cov is None else
        f"{preferences.predicted_kl(star, cov, config['beta']).mean():.4f} (second order in the reward error)"))
    checkpoint.save(args.out, model=MODEL, config=config, step=0,
                    model_state={"sft_logits": sft_logits, "dpo_logits": logits, "true_reward": task.reward})
    print(f"tables written to {args.out}")
    return 0


def _run_compare(args) -> int:
    config = settings(args)
    task, sft_logits, data, generator = prepare(config)
    reward_model = rlhf.fit_reward_model(data, task.prompts, task.responses)
    ppo_logp = F.log_softmax(run_ppo(config, sft_logits, reward_model, generator, args.quiet), dim=1)
    dpo_logp = F.log_softmax(dpo.train_dpo(sft_logits, data, config["beta"]), dim=1)
    ref = F.log_softmax(sft_logits, dim=1)
    star = preferences.optimal_policy(ref, task.reward, config["beta"])
    star_hat = preferences.optimal_policy(ref, reward_model, config["beta"])
    print(f"{task.prompts} prompts x {task.responses} responses, the same {len(data)} labelled comparisons for both "
          f"routes, beta {config['beta']:g}")
    print(f"both aim at pi*(reward model): KL(pi_PPO || it) {preferences.kl(ppo_logp, star_hat).mean():.2e}, "
          f"KL(pi_DPO || it) {preferences.kl(dpo_logp, star_hat).mean():.2e}")
    print("against pi* of the true reward:")
    for name, logp in (("SFT (pi_ref)", ref), ("PPO", ppo_logp), ("DPO", dpo_logp), ("pi*", star)):
        print(describe(name, preferences.measure(logp, ref, star, task.reward)))
    return 0
