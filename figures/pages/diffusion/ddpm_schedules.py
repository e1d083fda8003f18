"""alpha_bar and log-SNR of the linear (DDPM) and cosine (improved DDPM) schedules against t."""

from pathlib import Path

import torch

from refimpl.plots import save, subplots
from refimpl.schedules import make_schedule

PAGE = "diffusion/ddpm.md"
OUTPUTS = ("schedules.svg",)


def make(out: Path, preset: str) -> None:
    T = 1000
    fig, (ax_bar, ax_snr) = subplots(1, 2, figsize=(7, 3))
    t = torch.arange(1, T + 1)
    for name, label, color in (("linear", "线性 (linear)", "C0"), ("cosine", "余弦 (cosine)", "C1")):
        schedule = make_schedule(name, T)
        ax_bar.plot(t, schedule.alpha_bar, color=color, label=label)
        ax_snr.plot(t, torch.log(schedule.snr), color=color, label=label)
    # 11 pt: mathtext draws subscripts at 70%, which must stay legible
    ax_bar.set_xlabel("t")
    ax_bar.set_ylabel(r"$\bar\alpha_t$", fontsize=11)
    ax_bar.set_title(r"$\bar\alpha_t$", fontsize=11)
    ax_snr.set(xlabel="t", ylabel=r"$\log \mathrm{SNR}(t)$")
    ax_snr.set_title(r"$\log(\bar\alpha_t / (1-\bar\alpha_t))$", fontsize=11)
    for ax in (ax_bar, ax_snr):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save(fig, out / "schedules.svg")
