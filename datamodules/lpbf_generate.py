"""LPBF proxy: inherent-strain linear elasticity of voxelised random parts, made here
because the real LPBF files cannot be downloaded at run time.

This is NOT LPBF data and its numbers are not LPBF results. The real dataset comes from
Autodesk Netfabb thermo-mechanical simulations of the laser powder bed fusion build of
Fusion 360 parts; this proxy keeps its file layout and its kind of target (residual
displacement of a part built on a plate) with a much simpler model:

- Part: a random union of 2-4 boxes and maybe a vertical cylinder, minus up to two
  through-holes, on a voxel grid (default 16 x 16 x 16 voxels of 2.5 mm, the layer
  thickness of the real data), keeping the largest face-connected piece that touches
  the plate. It is centred in x, y and stands on the plate at z = 0 mm.
- Model: the inherent-strain method in one step. The whole part carries a uniform
  eigenstrain ε* = diag(-0.004, -0.004, -0.02) (shrinkage left by the melt-cooling
  cycles); linear elasticity with Ti-6Al-4V moduli (E = 110 GPa, ν = 0.34),
  ``∫ C (ε(u) - ε*) : ε(v) = 0``, with the nodes on the plate (z = 0) clamped.
  Trilinear hexahedra (scikit-fem), Jacobi-preconditioned conjugate gradients.
- Written fields: ``disp`` [mm], ``vmstr`` = von Mises of σ = C (ε(u) - ε*) [MPa]
  (element-corner values averaged at the nodes), ``temp`` = 25 °C everywhere (a
  placeholder: the proxy has no thermal model).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import scipy.ndimage as ndi
import scipy.sparse.linalg as spla
from skfem import Basis, BilinearForm, ElementHex1, ElementVector, LinearForm, MeshHex, asm, condense, solve
from skfem.helpers import ddot, sym_grad, trace

from datamodules.fem import nodal_gradient, von_mises
from datamodules.generate_util import parallel_map
from flare_lightning.atomic import atomic_directory, atomic_write

PROXY_TAG = "lpbfproxy"  # in every proxy file name, so proxy data is recognisable
PROXY_LABEL = (
    "LPBF proxy made by flare-lightning: one-step inherent-strain linear elasticity of a "
    "voxelised random part on a clamped plate; NOT LPBF simulation results"
)
YOUNG_MPA, POISSON = 110e3, 0.34  # Ti-6Al-4V, the alloy of the real data
INHERENT_STRAIN = (-0.004, -0.004, -0.02)  # ε*_xx, ε*_yy, ε*_zz
AMBIENT_C = 25.0
# VTK hexahedron order (bottom face counter-clockwise, then top), as in the real files;
# indexed by the corner code x + 2y + 4z of a voxel corner.
VTK_SLOT = np.array([0, 1, 3, 2, 4, 5, 7, 6])
HEX_EDGES = np.array([(0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 7), (7, 4), (0, 4), (1, 5), (2, 6), (3, 7)])


def random_part(rng: np.random.Generator, grid: tuple[int, int, int] = (16, 16, 16)) -> np.ndarray:
    """Occupancy [nx, ny, nz] of a random part: one face-connected piece standing on the plate (z = 0)."""
    shape = np.array(grid)
    occ = np.zeros(grid, dtype=bool)
    for b in range(rng.integers(2, 5)):
        size = rng.integers(np.maximum(1, shape // 4), shape + 1)
        lo = rng.integers(0, shape - size + 1)
        if b == 0:
            lo[2] = 0  # the first box stands on the plate, so the part is never empty
        occ[lo[0] : lo[0] + size[0], lo[1] : lo[1] + size[1], lo[2] : lo[2] + size[2]] = True
    i, j = np.meshgrid(np.arange(grid[0]) + 0.5, np.arange(grid[1]) + 0.5, indexing="ij")
    if rng.random() < 0.5:
        centre, radius = rng.uniform(0, shape[:2]), rng.uniform(1.0, max(1.0, shape[:2].min() / 3))
        disc = (i - centre[0]) ** 2 + (j - centre[1]) ** 2 <= radius**2
        occ[:, :, : rng.integers(1, grid[2] + 1)] |= disc[:, :, None]
    for _ in range(rng.integers(0, 3)):  # through-holes along x or y, above the first layer
        axis = rng.integers(0, 2)
        size = rng.integers(1, np.maximum(2, shape // 3))
        lo = rng.integers(0, shape - size + 1)
        lo[2] = max(lo[2], 1)
        cut = [slice(lo[k], lo[k] + size[k]) for k in range(3)]
        cut[axis] = slice(None)
        occ[tuple(cut)] = False
    labels, _ = ndi.label(occ)  # face connectivity
    grounded = np.unique(labels[:, :, 0])
    grounded = grounded[grounded > 0]
    sizes = np.bincount(labels.ravel())[grounded]
    return labels == grounded[np.argmax(sizes)]  # one part: the largest piece on the plate


def voxel_mesh(occ: np.ndarray, voxel_size: float = 2.5) -> MeshHex:
    """Hexahedral mesh of the occupied voxels [mm], centred in x, y, with z from 0."""
    nx, ny, nz = occ.shape
    lower = np.array([-nx / 2, -ny / 2, 0.0]) * voxel_size
    full = MeshHex.init_tensor(*(lower[k] + np.arange(n + 1) * voxel_size for k, n in enumerate(occ.shape)))
    ijk = np.floor((full.p[:, full.t].mean(axis=1) - lower[:, None]) / voxel_size).astype(int)  # [3, E]
    return full.restrict(np.flatnonzero(occ[ijk[0], ijk[1], ijk[2]]))


def solve_inherent_strain(
    mesh: MeshHex,
    strain: tuple[float, float, float] = INHERENT_STRAIN,
    support: str = "clamped",
    young: float = YOUNG_MPA,
    poisson: float = POISSON,
) -> tuple[np.ndarray, np.ndarray]:
    """Displacement [N, 3] and von Mises stress [N] of a part with uniform eigenstrain.

    Args:
        mesh: hexahedral mesh whose plate contact is the plane z = 0.
        strain: diagonal of the eigenstrain ε*.
        support: ``clamped`` (u = 0 on z = 0, the proxy's condition) or ``roller``
            (u_z = 0 on z = 0 plus two pinned in-plane components: the part is then
            stress-free with u = ε* (x - x0) exactly, which is used to check the solver).
        young: Young's modulus [MPa].
        poisson: Poisson's ratio.
    """
    lam = young * poisson / ((1 + poisson) * (1 - 2 * poisson))
    mu = young / (2 * (1 + poisson))
    eigen = np.diag(strain)
    eigen_stress = 2 * mu * eigen + lam * np.trace(eigen) * np.eye(3)  # C : ε*
    element = ElementVector(ElementHex1())
    basis = Basis(mesh, element, intorder=2)  # 2x2x2 Gauss: exact on these box elements

    @BilinearForm
    def stiffness(u, v, w):
        eu, ev = sym_grad(u), sym_grad(v)
        return 2 * mu * ddot(eu, ev) + lam * trace(eu) * trace(ev)

    @LinearForm
    def eigen_load(v, w):
        ev = sym_grad(v)
        return sum(eigen_stress[i, j] * ev[i, j] for i in range(3) for j in range(3))

    base = np.flatnonzero(np.isclose(mesh.p[2], 0.0))
    if support == "clamped":
        fixed = basis.nodal_dofs[:, base].ravel()
    elif support == "roller":
        order = np.lexsort((mesh.p[0, base], mesh.p[1, base]))  # by y, then x
        origin, along_x = base[order[0]], base[order[1]]  # same y (the lowest row has >= 2 nodes)
        pins = [basis.nodal_dofs[2, base], basis.nodal_dofs[:2, origin], basis.nodal_dofs[1, [along_x]]]
        fixed = np.concatenate(pins)
    else:
        raise ValueError(f"support must be 'clamped' or 'roller', got {support!r}")
    u = solve(*condense(asm(stiffness, basis), asm(eigen_load, basis), D=fixed), solver=_spd_solver)

    grad = nodal_gradient(mesh, element, u)  # [3, 3, N]
    elastic = 0.5 * (grad + grad.transpose(1, 0, 2)) - eigen[:, :, None]
    stress = 2 * mu * elastic + lam * np.trace(elastic) * np.eye(3)[:, :, None]
    return u[basis.nodal_dofs].T, von_mises(stress)


def _spd_solver(matrix, rhs: np.ndarray, rtol: float = 1e-10) -> np.ndarray:
    """Jacobi-preconditioned conjugate gradients (3-5x faster than sparse LU here); LU if
    it stalls. Written out with ``np.sum`` reductions instead of BLAS dot products, whose
    threads slow scipy's ``cg`` down 10-20x on a busy machine with few cores."""
    inv_diag = 1.0 / matrix.diagonal()
    x = np.zeros_like(rhs)
    r = rhs.copy()
    z = inv_diag * r
    p = z.copy()
    rz = np.sum(r * z)
    stop = rtol * np.sqrt(np.sum(rhs * rhs))
    for _ in range(10 * rhs.size):
        q = matrix @ p
        alpha = rz / np.sum(p * q)
        x += alpha * p
        r -= alpha * q
        if np.sqrt(np.sum(r * r)) <= stop:
            return x
        z = inv_diag * r
        rz, rz_old = np.sum(r * z), rz
        p = z + (rz / rz_old) * p
    return spla.spsolve(matrix.tocsc(), rhs)


def hex_connectivity(mesh: MeshHex) -> tuple[np.ndarray, np.ndarray]:
    """``elems`` (E, 8) int32 in VTK order and ``edge_index`` (2, M) int64: every hexahedron
    edge in both directions, sorted by (source, target), as in the real files."""
    corners = mesh.p[:, mesh.t]  # [3, 8, E]
    code = (corners > corners.min(axis=1, keepdims=True) + 1e-9).astype(int)
    slot = VTK_SLOT[code[0] + 2 * code[1] + 4 * code[2]]  # [8, E]
    elems = np.empty((mesh.t.shape[1], 8), dtype=np.int32)
    np.put_along_axis(elems, slot.T, mesh.t.T, axis=1)
    pairs = elems[:, HEX_EDGES].reshape(-1, 2).astype(np.int64)
    pairs = np.unique(np.concatenate([pairs, pairs[:, ::-1]]), axis=0)  # lexicographic
    return elems, pairs.T.copy()


def lpbf_proxy_case(
    index: int, seed: int, grid: tuple[int, int, int] = (16, 16, 16), voxel_size: float = 2.5
) -> dict[str, np.ndarray | dict]:
    """Arrays of proxy case ``index`` of stream ``seed`` in the real layout, plus ``metadata``."""
    rng = np.random.default_rng([seed, index])
    mesh = voxel_mesh(random_part(rng, grid), voxel_size)
    disp, vmstr = solve_inherent_strain(mesh)
    elems, edge_index = hex_connectivity(mesh)
    n = mesh.p.shape[1]
    metadata = {
        "case_name": f"{PROXY_TAG}_s{seed}_{index:05d}",
        "zmax": float(mesh.p[2].max()),
        "time_steps": 1,
        "source": PROXY_LABEL,
        "voxel_size_mm": voxel_size,
        "inherent_strain": list(INHERENT_STRAIN),
        "young_modulus_mpa": YOUNG_MPA,
        "poisson_ratio": POISSON,
    }
    return {
        "pos": mesh.p.T.astype(np.float32),
        "elems": elems,
        "edge_index": edge_index,
        "disp": disp.astype(np.float32),
        "vmstr": vmstr.astype(np.float32).reshape(n, 1),
        "temp": np.full((n, 1), AMBIENT_C, dtype=np.float32),
        "metadata": metadata,
    }


def write_case(path: str | Path, case: dict[str, np.ndarray | dict]) -> None:
    """Write one case as the real files are: ``np.savez_compressed`` with ``_metadata`` a
    one-element object array holding ``json.dumps({"metadata": ...})``; atomically."""
    arrays = {k: v for k, v in case.items() if k != "metadata"}
    arrays["_metadata"] = np.array([json.dumps({"metadata": case["metadata"]})], dtype=object)
    atomic_write(path, lambda f: np.savez_compressed(f, **arrays))


def _make_case(index: int, folder: Path, seed: int, grid: tuple[int, int, int], voxel_size: float) -> int:
    case = lpbf_proxy_case(index, seed, grid, voxel_size)
    write_case(folder / f"case{index:05d}_{PROXY_TAG}.npz", case)
    return case["pos"].shape[0]


def generate_lpbf_proxy(
    folder: str | Path,
    num_samples: int,
    seed: int = 0,
    workers: int = 1,
    grid: tuple[int, int, int] = (16, 16, 16),
    voxel_size: float = 2.5,
) -> list[int]:
    """Write ``num_samples`` proxy cases to ``folder/case*_lpbfproxy.npz``; returns their
    node counts. The folder appears only once every case is written."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    with atomic_directory(folder) as tmp:
        make = functools.partial(_make_case, folder=tmp, seed=seed, grid=tuple(grid), voxel_size=voxel_size)
        return parallel_map(make, range(num_samples), workers, desc=f"LPBF proxy cases ({Path(folder).name})")
