"""Darcy flow samples made with the FNO recipe, written in the FNO ``.mat`` layout.

Coefficient: a Gaussian random field with covariance ``(-Δ + τ²)^(-α/2)`` (α = 2, τ = 3,
drawn through an inverse DCT as in the FNO code), thresholded to 12 where >= 0 and 3
where < 0 (``permeability``: another pair of values, the same fields' geometry). Solution: ``-∇·(a ∇u) = 1`` on the unit square, u = 0 on the boundary,
5-point finite differences with face coefficients averaged, solved by sparse LU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.fft
import scipy.io
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from datamodules.progress import progress
from flare_lightning.atomic import atomic_write

HIGH, LOW = 12.0, 3.0  # the FNO data's permeability: contrast 4


def check_permeability(values: tuple[float, float] | list[float], name: str = "permeability") -> tuple[float, float]:
    """``(high, low)`` as floats, or a ``ValueError`` naming ``name``: two different finite values
    > 0 (the equation is elliptic only for a positive coefficient; one value is no field)."""
    try:
        high, low = (float(v) for v in values)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be two numbers (high, low), got {values!r}") from err
    if not (np.isfinite(high) and np.isfinite(low) and high > 0 and low > 0 and high != low):
        raise ValueError(f"{name} must be two different finite values > 0 (high, low), got {values!r}")
    return high, low


def gaussian_random_field(rng: np.random.Generator, s: int, alpha: float = 2.0, tau: float = 3.0) -> np.ndarray:
    """One [s, s] sample of the GRF with covariance ``(-Δ + τ²)^(-α/2)`` (Neumann modes)."""
    k1, k2 = np.meshgrid(np.arange(s), np.arange(s), indexing="ij")
    coef = tau ** (alpha - 1) * (np.pi**2 * (k1**2 + k2**2) + tau**2) ** (-alpha / 2)
    modes = s * coef * rng.standard_normal((s, s))
    modes[0, 0] = 0.0
    return scipy.fft.idctn(modes, norm="ortho")


def darcy_coefficient(rng: np.random.Generator, s: int, permeability: tuple[float, float] = (HIGH, LOW)) -> np.ndarray:
    """Piecewise-constant permeability [s, s]: ``high`` where the GRF is >= 0, else ``low``
    (FNO: 12 and 3)."""
    high, low = permeability
    return np.where(gaussian_random_field(rng, s) >= 0, high, low)


def darcy_operator(coeff: np.ndarray) -> sp.csr_matrix:
    """Sparse 5-point matrix of ``-∇·(a ∇u)`` on the interior nodes of an [s, s] grid
    on [0, 1]² with u = 0 on the boundary; face coefficients are arithmetic means."""
    s = coeff.shape[0]
    h = 1.0 / (s - 1)
    m = s - 2
    idx = np.arange(m * m).reshape(m, m)
    a = coeff
    c = a[1:-1, 1:-1]
    east = 0.5 * (c + a[2:, 1:-1])
    west = 0.5 * (c + a[:-2, 1:-1])
    north = 0.5 * (c + a[1:-1, 2:])
    south = 0.5 * (c + a[1:-1, :-2])
    rows, cols, vals = [idx.ravel()], [idx.ravel()], [(east + west + north + south).ravel()]
    for face, di, dj in ((east, 1, 0), (west, -1, 0), (north, 0, 1), (south, 0, -1)):
        ii, jj = np.meshgrid(np.arange(m), np.arange(m), indexing="ij")
        ni, nj = ii + di, jj + dj
        inside = (ni >= 0) & (ni < m) & (nj >= 0) & (nj < m)
        rows.append(idx[inside])
        cols.append(idx[ni[inside], nj[inside]])
        vals.append(-face[inside])
    mat = sp.coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(m * m, m * m))
    return (mat / h**2).tocsc()


def solve_darcy(coeff: np.ndarray, forcing: float = 1.0) -> np.ndarray:
    """Solution [s, s] of ``-∇·(a ∇u) = forcing`` with zero Dirichlet boundary."""
    s = coeff.shape[0]
    rhs = np.full((s - 2) ** 2, forcing)
    u = np.zeros((s, s))
    u[1:-1, 1:-1] = spla.splu(darcy_operator(coeff)).solve(rhs).reshape(s - 2, s - 2)
    return u


def generate_darcy(num_samples: int, resolution: int, seed: int,
                   permeability: tuple[float, float] = (HIGH, LOW)) -> tuple[np.ndarray, np.ndarray]:
    """``coeff`` and ``sol``, float32 [num_samples, s, s], deterministic for a seed; ``permeability``
    is the (high, low) pair of the thresholded field (one seed draws the same fields' geometry
    whatever the pair)."""
    permeability = check_permeability(permeability)
    rng = np.random.default_rng(seed)
    coeff = np.empty((num_samples, resolution, resolution), dtype=np.float32)
    sol = np.empty_like(coeff)
    for i in progress(range(num_samples), f"Darcy samples ({resolution}x{resolution})", total=num_samples):
        a = darcy_coefficient(rng, resolution, permeability)
        coeff[i] = a
        sol[i] = solve_darcy(a)
    return coeff, sol


def write_darcy_mat(path: str | Path, coeff: np.ndarray, sol: np.ndarray) -> None:
    """Write ``coeff``/``sol`` as a MATLAB v5 file in the FNO layout, atomically."""
    arrays = {"coeff": coeff.astype(np.float32), "sol": sol.astype(np.float32)}
    atomic_write(path, lambda f: scipy.io.savemat(f, arrays))
