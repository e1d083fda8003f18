"""``python -m refimpl rlhf ...``: InstructGPT's three steps (SFT, reward model, PPO) on the toy preference problem."""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from refimpl import checkpoint, preferences, rlhf
from refimpl.cli import add_preset, positive_float, positive_int
from refimpl.core import LineageError, progress

MODEL = "rlhf"


def at_least_two(text: str) -> int:
    value = positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"expected at least 2 (a comparison needs two responses), got {value}")
    return value


def add_problem(cmd: argparse.ArgumentParser) -> None:
    """The options of the toy problem, shared by ``rlhf train``, ``dpo train`` and ``dpo compare``."""
    add_preset(cmd)
    cmd.add_argument("--beta", type=positive_float, default=preferences.BETA,
                     help=f"KL coefficient beta (default {preferences.BETA})")
    cmd.add_argument("--prompts", type=positive_int, help="number of prompts P (default: the preset's)")
    cmd.add_argument("--responses", type=at_least_two, help="responses per prompt K (default: the preset's)")
    cmd.add_argument("--demonstrations", type=positive_int,
                     help="SFT demonstrations per prompt (default: the preset's)")
    cmd.add_argument("--comparisons", type=positive_int, help="labelled comparisons per prompt (default: the preset's)")


def add_ppo(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--iterations", type=positive_int, help="PPO rollouts (default: the preset's)")
    cmd.add_argument("--batch", type=positive_int,
                     help="responses sampled per prompt per rollout (default: the preset's)")
    cmd.add_argument("--epochs", type=positive_int, help="gradient steps per rollout (default: the preset's)")
    cmd.add_argument("--lr", type=positive_float, help="step size (default 1 / beta)")
    cmd.add_argument("--clip", type=positive_float, default=0.2, help="PPO's clip range epsilon (default 0.2)")


def add_run(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--seed", type=int, default=0, help="random seed of the data and of PPO (default 0)")
    cmd.add_argument("--quiet", action="store_true", help="no progress bar")


def add_commands(commands) -> None:
    """``python -m refimpl rlhf train``."""
    cmd = commands.add_parser("train", help="supervised fine-tuning, a Bradley-Terry reward model and PPO with a KL "
                                            "penalty on a toy preference problem; prints how close PPO gets to pi*")
    add_problem(cmd)
    add_ppo(cmd)
    cmd.add_argument("--out", required=True, help="output directory (the policy tables, safetensors + config.json)")
    add_run(cmd)
    cmd.set_defaults(run=_run_train)


def settings(args) -> dict:
    """The run's configuration: the preset's sizes and PPO settings, overridden by the options given."""
    config = dict(preferences.SIZES[args.preset], beta=args.beta, seed=args.seed)
    if hasattr(args, "iterations"):
        config.update(rlhf.PPO_SETTINGS[args.preset], lr=1.0 / args.beta, clip=args.clip)
    for key in config:
        if getattr(args, key, None) is not None:
            config[key] = getattr(args, key)
    if config.get("clip", 0) >= 1:
        raise LineageError(f"--clip must be below 1, got {config['clip']}")
    return config


def prepare(config: dict):
    """The task, the SFT logits and the comparisons of a configuration (the same for rlhf and dpo at one seed)."""
    torch.set_num_threads(1)  # tables of a few numbers (even the full preset's): more threads only synchronise
    task = preferences.make_task(config["prompts"], config["responses"], config["seed"])
    generator = torch.Generator().manual_seed(config["seed"])
    sft_logits, data = rlhf.sft_and_comparisons(task, demonstrations=config["demonstrations"],
                                                comparisons=config["comparisons"], generator=generator)
    return task, sft_logits, data, generator


def run_ppo(config: dict, sft_logits, reward_model, generator, quiet: bool):
    bar = progress(range(config["iterations"]), desc="PPO", disable=quiet)
    ticks = iter(bar)
    logits = rlhf.ppo(sft_logits, reward_model, config["beta"], iterations=config["iterations"], batch=config["batch"],
                      epochs=config["epochs"], lr=config["lr"], clip=config["clip"], generator=generator,
                      callback=lambda it, theta: next(ticks, None))
    bar.close()
    return logits


def refuse_other_run(out: str, model: str) -> None:
    """An --out directory that holds another paper's run (or a corrupt one) is refused, not overwritten."""
    if checkpoint.exists(out):
        checkpoint.load(out, expect_model=model)


def covariance(task, data):
    """The reward model's asymptotic covariance, or None where some prompt's comparisons do not connect all its
    responses (then the likelihood cannot pin their rewards down and there is no standard error)."""
    try:
        return preferences.bradley_terry_covariance(task.reward, data)
    except torch.linalg.LinAlgError:
        return None


def describe(name: str, m: dict) -> str:
    return (f"  {name:14s} KL(pi||pi*) {m['kl_star']:.4f}  KL(pi||pi_ref) {m['kl_ref']:.4f}  "
            f"E[r] {m['reward']:+.3f}  win rate vs pi_ref {m['win']:.3f}")


def _run_train(args) -> int:
    config = settings(args)
    refuse_other_run(args.out, MODEL)
    task, sft_logits, data, generator = prepare(config)
    reward_model = rlhf.fit_reward_model(data, task.prompts, task.responses)
    logits = run_ppo(config, sft_logits, reward_model, generator, args.quiet)
    ref = F.log_softmax(sft_logits, dim=1)
    star = preferences.optimal_policy(ref, task.reward, config["beta"])
    star_hat = preferences.optimal_policy(ref, reward_model, config["beta"])
    error = reward_model - preferences.centred(task.reward)
    cov = covariance(task, data)
    print(f"{task.prompts} prompts x {task.responses} responses, {len(data)} labelled comparisons, "
          f"beta {config['beta']:g}")
    print(f"reward model: largest error {error.abs().max():.3f} (centred per prompt), " + (
        "no standard errors: some responses were never compared" if cov is None else
        f"{(error.abs() / torch.diagonal(cov, dim1=1, dim2=2).sqrt()).max():.2f} standard errors"))
    ppo_logp = F.log_softmax(logits, dim=1)
    print(f"PPO against it: KL(pi_PPO || pi*(reward model)) {preferences.kl(ppo_logp, star_hat).mean():.2e}")
    print("against pi* of the true reward:")
    for name, logp in (("SFT (pi_ref)", ref), ("PPO", ppo_logp), ("pi*", star)):
        print(describe(name, preferences.measure(logp, ref, star, task.reward)))
    checkpoint.save(args.out, model=MODEL, config=config, step=config["iterations"],
                    model_state={"sft_logits": sft_logits, "reward_model": reward_model, "ppo_logits": logits,
                                 "true_reward": task.reward})
    print(f"tables written to {args.out}")
    return 0
