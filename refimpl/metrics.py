"""Sample-based distances between two point clouds: sliced Wasserstein and MMD."""

from __future__ import annotations

import torch


def _quantiles(sorted_values: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Empirical quantile function of each row of ``sorted_values`` (P, n) at ``levels`` in (0, 1),
    linear between the order statistics placed at (i + 0.5) / n."""
    n = sorted_values.shape[1]
    pos = (levels * n - 0.5).clamp(0, n - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=n - 1)
    w = pos - lo
    return (1 - w) * sorted_values[:, lo] + w * sorted_values[:, hi]


def sliced_wasserstein(x: torch.Tensor, y: torch.Tensor, n_projections: int = 256,
                       generator: torch.Generator | None = None) -> float:
    """Sliced 2-Wasserstein distance: sqrt(mean over random unit directions u of W2^2(u.x, u.y)).

    Each 1-D W2 compares sorted projections (the empirical quantile functions); for samples of
    unequal size both quantile functions are interpolated at max(n, m) common levels. Directions are
    uniform on the sphere, drawn from ``generator``. Computed in float64.
    """
    x, y = x.detach().to("cpu", torch.float64).flatten(1), y.detach().to("cpu", torch.float64).flatten(1)
    if x.shape[1] != y.shape[1]:
        raise ValueError("x and y must have the same dimension")
    u = torch.randn(x.shape[1], n_projections, generator=generator, dtype=torch.float64)
    u = u / u.norm(dim=0, keepdim=True)
    px, py = (u.T @ x.T).sort(dim=1).values, (u.T @ y.T).sort(dim=1).values  # (P, n): sort rows, fast
    if px.shape[1] != py.shape[1]:
        n = max(px.shape[1], py.shape[1])
        levels = (torch.arange(n, dtype=torch.float64) + 0.5) / n
        px, py = _quantiles(px, levels), _quantiles(py, levels)
    return ((px - py) ** 2).mean().sqrt().item()


def mmd_rbf(x: torch.Tensor, y: torch.Tensor, bandwidths=(0.1, 0.2, 0.5, 1.0, 2.0)) -> float:
    """Unbiased estimate of the squared maximum mean discrepancy, MMD_u^2 of Gretton et al.,
    "A Kernel Two-Sample Test" (JMLR 2012), with the kernel
    k(a, b) = sum_h exp(-|a - b|^2 / (2 h^2)) over ``bandwidths`` h.

    The unbiased estimator drops the diagonal terms, so it can be slightly negative when x and y
    come from the same distribution. Computed in float64.
    """
    x, y = x.detach().to("cpu", torch.float64).flatten(1), y.detach().to("cpu", torch.float64).flatten(1)
    n, m = x.shape[0], y.shape[0]
    if n < 2 or m < 2:
        raise ValueError("the unbiased MMD needs at least two points in each set")

    def kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        d2 = torch.cdist(a, b).pow(2)
        return sum(torch.exp(-d2 / (2 * h**2)) for h in bandwidths)

    k_xx, k_yy, k_xy = kernel(x, x), kernel(y, y), kernel(x, y)
    term_xx = (k_xx.sum() - k_xx.diagonal().sum()) / (n * (n - 1))
    term_yy = (k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
    return (term_xx + term_yy - 2 * k_xy.mean()).item()
