"""For each sampler, the model evaluations (NFE) needed to reach the quality of 1000-step DDPM on the
closed-form benchmark (figures.lib.closed_form: exact eps of a 2-D Gaussian mixture, so the error is the
sampler's alone). The same computation as the solvers page's table
(figures/pages/efficient-sampling/solvers_nfe.py), printed.
Usage: python benchmarks/nfe_table.py  (a few minutes on a CPU; the exact eps runs on the CPU anyway)
"""

from figures import builder
from figures.lib.closed_form import fewest


def main() -> None:
    solvers_nfe = builder.load_script("solvers_nfe")  # a figure script: figures/pages/ is not a package
    runs, cf = solvers_nfe.RUNS, solvers_nfe.closed_form()
    print(f"DDPM 1000 steps: gap {cf['ddpm_1000']:.4f} nats; Monte Carlo s.e. {cf['floor']:.4f}; "
          f"reached when gap <= {cf['reach']:.4f}")
    print(f"{'sampler':28s} {'NFE to reach':>12s} {'gap there':>10s}   gap at each NFE tried")
    for label, *_rest in runs:
        curve = cf["curves"][label]
        need = fewest(curve, cf["reach"])
        tried = ", ".join(f"{n}: {g:.3f}" for n, g in sorted(curve.items()))
        print(f"{label:28s} {('not reached' if need is None else str(need)):>12s} "
              f"{('-' if need is None else f'{curve[need]:.4f}'):>10s}   {tried}")


if __name__ == "__main__":
    main()
