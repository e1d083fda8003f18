"""``python -m refimpl scaling ...``: train the grid of character-level LLaMA models of the scaling-laws page and fit
Chinchilla's parametric law to their held-out losses."""

from __future__ import annotations

from refimpl import scaling
from refimpl.cli import add_common, add_train_command, nonnegative_int
from refimpl.core import pick_device
from refimpl.gpt import text_data


def add_commands(commands) -> None:
    """``python -m refimpl scaling train|fit``."""
    add_train_command(commands, _run_train, steps={}, out_help="directory of the grid (one checkpoint per run)",
                      help="train every (width, token budget) run of the grid on the notes; reruns resume")

    cmd = commands.add_parser("fit", help="fit L(N, D) = E + A/N^alpha + B/D^beta to a trained grid (Chinchilla's "
                                          "approach 3) and print the compute-optimal exponents")
    cmd.add_argument("--grid", required=True, help="directory written by train")
    cmd.add_argument("--count", choices=("total", "non_embedding"), default="total",
                     help="how N is counted: every parameter (Chinchilla, default) or without the embeddings (Kaplan)")
    cmd.add_argument("--bootstrap", type=nonnegative_int, default=100,
                     help="refits on random 80%% subsets of the runs for the 10-90%% intervals (default 100; 0: none)")
    add_common(cmd)
    cmd.set_defaults(run=_run_fit)


def _run_train(args) -> int:
    device = pick_device(args.device)
    data = text_data()
    grid = scaling.grid_config(args.preset, seed=args.seed, data=data)
    results = scaling.run_grid(grid, args.out, device=device, progress=not args.quiet, data=data)
    print(f"{'width':>5} {'N total':>9} {'N non-emb':>9} {'D':>9} {'held-out':>8}")
    for r in results["runs"]:
        print(f"{r['width']:>5} {r['total']:>9,} {r['non_embedding']:>9,} {r['tokens']:>9,} {r['held_out']:>8.3f}")
    print(f"held-out loss in nats/char (unigram baseline {results['unigram']:.3f}); {len(results['runs'])} runs on "
          f"{device} in {args.out}")
    return 0


def _run_fit(args) -> int:
    summary = scaling.fit_grid(scaling.read_results(args.grid), count=args.count, times=args.bootstrap,
                               seed=args.seed)
    law, interval = summary["law"], summary["interval"]
    names = {"E": "E", "A": "A", "B": "B", "alpha": "alpha", "beta": "beta", "a": "a (N_opt ~ C^a)",
             "b": "b (D_opt ~ C^b)"}
    print(f"L(N, D) = E + A / N^alpha + B / D^beta, N = {args.count.replace('_', '-')} parameters, C = 6 N D")
    for key, name in names.items():
        bounds = f"  (10-90%: {interval[key][0]:.4g} .. {interval[key][1]:.4g})" if interval else ""
        print(f"{name:>16} = {law[key]:.4g}{bounds}")
    print(f"rms residual of log loss {summary['residual_rms']:.4f}")
    return 0
