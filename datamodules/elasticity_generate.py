"""Elasticity unit cells made here with scikit-fem, written in the Geo-FNO ``.npy`` layout.

Geometry (as in Geo-FNO): the unit cell [0, 1]² with a central void of radius
``r(θ) = 0.2 + 0.2 / (1 + exp(r̃(θ)))``, where r̃ is a smooth random periodic function:
the first five Fourier modes of the Gaussian process ``4² (-d²/dθ² + 3²)^-1`` on the
circle, ``r̃(θ) = Σ_k 4 / sqrt(k² + 9) (ξ_{2k-1} cos kθ + ξ_{2k} sin kθ)``, k = 1..5,
ξ ~ N(0, 1) (the 10 ξ are what ``theta`` holds).

Mesh: a body-fitted O-grid of 108 (around) x 9 (outwards) = 972 vertices, the Geo-FNO
point count; rays run from the void boundary to the square's edge, layers are graded
towards the void, and the four corners of the square are vertices.

Solve: bottom edge clamped (u = 0), traction (0, 100) on the top edge, sides and void
free; plane strain. The Geo-FNO material is incompressible Rivlin-Saunders (C1 =
1.863e5, C2 = 9.79e3); at this load (strains ~ 1e-3) its response is linear to well under
1%, so we solve its linearisation exactly: incompressible linear elasticity with the
same shear modulus μ = 2 (C1 + C2), in mixed form (displacement u, pressure p):
``∫ 2μ ε(u):ε(v) + ∫ p div v = ∫_top t·v`` and ``∫ q div u = 0``, with Taylor-Hood
Q2/Q1 quadrilaterals (inf-sup stable, so no locking). Stress ``σ = 2μ ε(u) + p I`` with
σ_zz = p (plane strain, ε_zz = 0); the target is its von Mises stress, at the vertices
(gradients averaged over the elements sharing a vertex).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from skfem import (
    Basis,
    BilinearForm,
    ElementQuad1,
    ElementQuad2,
    ElementVector,
    FacetBasis,
    LinearForm,
    MeshQuad,
    asm,
    condense,
    solve,
)
from skfem.helpers import ddot, div, sym_grad

from datamodules.fem import nodal_gradient, von_mises
from datamodules.generate_util import parallel_map
from flare_lightning.atomic import atomic_write_files

FILES = {
    "XY": "Meshes/Random_UnitCell_XY_10.npy",  # (972, 2, S) vertex coordinates
    "sigma": "Meshes/Random_UnitCell_sigma_10.npy",  # (972, S) von Mises stress
    "rr": "Meshes/Random_UnitCell_rr_10.npy",  # (42, S) void radius at 42 angles
    "theta": "Meshes/Random_UnitCell_theta_10.npy",  # (S, 10) random coefficients
}
N_AROUND, N_OUT = 108, 9  # O-grid vertices: 108 * 9 = 972, as in the Geo-FNO files
GRADING = 1.3  # layer spacing ~ s**1.3: finer at the void, where stress concentrates
N_MODES = 5  # Fourier modes of r̃ (2 coefficients each)
RR_POINTS = 42  # angles of the rr file, 0..2π with both ends (rr[0] == rr[-1])
C1, C2 = 1.863e5, 9.79e3  # Rivlin-Saunders constants of Geo-FNO
SHEAR_MODULUS = 2.0 * (C1 + C2)  # small-strain shear modulus of that material
TRACTION = 100.0  # vertical traction on the top edge


def void_radius(theta: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """r(θ) = 0.2 + 0.2 / (1 + exp(r̃(θ))) at ``angles`` [n] for coefficients ``theta`` [10]."""
    k = np.arange(1, N_MODES + 1)
    amplitude = 4.0 / np.sqrt(k**2 + 9.0)
    phase = np.outer(angles, k)  # [n, modes]
    r_tilde = (amplitude * (theta[0::2] * np.cos(phase) + theta[1::2] * np.sin(phase))).sum(-1)
    return 0.2 + 0.2 / (1.0 + np.exp(r_tilde))


def unit_cell_mesh(theta: np.ndarray) -> MeshQuad:
    """O-grid quadrilateral mesh of the unit cell around the void of ``theta``: 972 vertices."""
    angles = 2 * np.pi * (np.arange(N_AROUND) + 0.5) / N_AROUND  # half-step offset: corners at 45°
    ray = np.stack([np.cos(angles), np.sin(angles)])  # [2, A]
    inner = 0.5 + void_radius(theta, angles) * ray
    outer = np.clip(0.5 + 0.5 / np.abs(ray).max(0) * ray, 0.0, 1.0)
    outer[np.isclose(outer, 0.0, atol=1e-12)] = 0.0  # exact edges, so boundary tests are exact
    outer[np.isclose(outer, 1.0, atol=1e-12)] = 1.0
    s = np.linspace(0.0, 1.0, N_OUT) ** GRADING  # [L]
    p = inner[:, None, :] + s[None, :, None] * (outer - inner)[:, None, :]  # [2, L, A]
    idx = np.arange(N_OUT * N_AROUND).reshape(N_OUT, N_AROUND)
    nxt = np.roll(idx, -1, axis=1)
    t = np.stack([idx[:-1], nxt[:-1], nxt[1:], idx[1:]]).reshape(4, -1)
    return MeshQuad(p.reshape(2, -1), t)


@dataclass
class UnitCellSolution:
    """Vertex fields of one solve: ``displacement`` [N, 2], ``stress`` [3, 3, N] (plane
    strain), ``von_mises`` [N], and the support ``reaction`` [2]: the total force the
    support exerts on the cell (``(0, -traction · width)`` in equilibrium)."""

    displacement: np.ndarray
    stress: np.ndarray
    von_mises: np.ndarray
    reaction: np.ndarray


def solve_unit_cell(
    mesh: MeshQuad, support: str = "clamped", traction: float = TRACTION, shear_modulus: float = SHEAR_MODULUS
) -> UnitCellSolution:
    """Incompressible plane-strain solve on ``mesh`` (bottom at y = 0, top at y = 1).

    With incompressibility and only traction/clamped boundaries the stress does not
    depend on μ (the displacement scales as 1/μ), so the system is assembled with μ = 1,
    which keeps the saddle-point matrix well scaled, and u is divided by μ afterwards.

    Args:
        mesh: quadrilateral mesh of the cell.
        support: ``clamped`` (u = 0 on the bottom, the dataset's condition) or ``roller``
            (u_y = 0 on the bottom and u_x = 0 at the origin: uniaxial tension, whose exact
            solution is uniform and is used to check the solver).
        traction: vertical traction on the top edge.
        shear_modulus: μ, which only scales the displacement.
    """
    eu, ep = ElementVector(ElementQuad2()), ElementQuad1()
    bu = Basis(mesh, eu)
    bp = Basis(mesh, ep, quadrature=bu.quadrature)

    @BilinearForm
    def shear(u, v, w):
        return 2.0 * ddot(sym_grad(u), sym_grad(v))

    @BilinearForm
    def divergence(u, q, w):
        return div(u) * q

    @LinearForm
    def pull(v, w):
        return traction * v[1]

    a, b = asm(shear, bu), asm(divergence, bu, bp)  # b: [n_p, n_u]
    top = FacetBasis(mesh, eu, facets=mesh.facets_satisfying(lambda x: np.isclose(x[1], 1.0)))
    system = sp.bmat([[a, b.T], [b, None]], format="csr")
    rhs = np.concatenate([asm(pull, top), np.zeros(bp.N)])
    bottom = bu.get_dofs(lambda x: np.isclose(x[1], 0.0))
    if support == "clamped":
        fixed = bottom.all()
    elif support == "roller":
        origin = bu.get_dofs(lambda x: np.isclose(x[0], 0.0) & np.isclose(x[1], 0.0))
        fixed = np.concatenate([bottom.all(["u^2"]), origin.all(["u^1"])])
    else:
        raise ValueError(f"support must be 'clamped' or 'roller', got {support!r}")
    x = solve(*condense(system, rhs, D=fixed), solver=_saddle_point_solver)
    # K x = f + r: the residual is the support reaction, non-zero only on fixed dofs
    residual = system @ x - rhs
    reaction = np.array([residual[bottom.all(["u^1"])].sum(), residual[bottom.all(["u^2"])].sum()])

    u, p = x[: bu.N], x[bu.N :]
    grad = nodal_gradient(mesh, eu, u)  # [2, 2, N]
    stress = np.zeros((3, 3, mesh.p.shape[1]))
    stress[:2, :2] = grad + grad.transpose(1, 0, 2)  # 2 μ ε(u) with μ = 1
    stress += p[bp.nodal_dofs[0]] * np.eye(3)[:, :, None]  # Q1: one pressure per vertex
    displacement = u[bu.nodal_dofs].T / shear_modulus
    return UnitCellSolution(displacement, stress, von_mises(stress), reaction)


def _saddle_point_solver(matrix: sp.spmatrix, rhs: np.ndarray) -> np.ndarray:
    """Sparse LU of the symmetric indefinite system in symmetric mode (an ordering of
    A + Aᵀ, diagonal pivots: ~10x less fill than the default), with one refinement step;
    falls back to partial pivoting if that is not accurate."""
    a = matrix.tocsc()
    lu = spla.splu(a, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0, options={"SymmetricMode": True})
    x = lu.solve(rhs)
    x += lu.solve(rhs - a @ x)
    if np.linalg.norm(rhs - a @ x) > 1e-9 * np.linalg.norm(rhs):
        x = spla.splu(a, permc_spec="MMD_ATA").solve(rhs)
    return x


def elasticity_sample(index: int, seed: int) -> dict[str, np.ndarray]:
    """Sample ``index`` of the stream ``seed``: ``XY`` [972, 2], ``sigma`` [972], ``rr`` [42],
    ``theta`` [10]. It depends only on (seed, index), not on how the work is split."""
    rng = np.random.default_rng([seed, index])
    theta = rng.standard_normal(2 * N_MODES)
    mesh = unit_cell_mesh(theta)
    solution = solve_unit_cell(mesh)
    rr = void_radius(theta, np.linspace(0.0, 2 * np.pi, RR_POINTS))
    return {"XY": mesh.p.T.copy(), "sigma": solution.von_mises, "rr": rr, "theta": theta}


def generate_elasticity(num_samples: int, seed: int = 0, workers: int = 1) -> dict[str, np.ndarray]:
    """``num_samples`` cells as float64 arrays in the Geo-FNO layout, keyed as ``FILES``:
    ``XY`` (972, 2, S), ``sigma`` (972, S), ``rr`` (42, S), ``theta`` (S, 10)."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    make = functools.partial(elasticity_sample, seed=seed)
    samples = parallel_map(make, range(num_samples), workers, desc="elasticity cells (FEM)")
    return {
        "XY": np.stack([s["XY"] for s in samples], axis=-1),
        "sigma": np.stack([s["sigma"] for s in samples], axis=-1),
        "rr": np.stack([s["rr"] for s in samples], axis=-1),
        "theta": np.stack([s["theta"] for s in samples], axis=0),
    }


def write_elasticity(root: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """Write the four arrays to ``root/Meshes/Random_UnitCell_*_10.npy`` as float64, all
    or none (temporary files renamed once every one is written)."""
    writes = {}
    for key, rel in FILES.items():
        array = np.asarray(arrays[key], dtype=np.float64)
        writes[Path(root) / rel] = lambda f, a=array: np.save(f, a)
    atomic_write_files(writes)
