"""DrivAerML proxy (potential flow): surface pressure on random car-like bodies, made
here because the real DrivAerML files cannot be downloaded at run time.

This is NOT DrivAerML data. Each body is a smooth bluff body (a superellipsoid-like
shape with random length, width, height, nose and rear bluntness, section squareness,
hood and boot dips) in free air, without ground, wheels or wake. The flow is steady,
inviscid and irrotational; the surface pressure comes from a Hess-Smith panel method:
constant-strength source triangles with exact flat-panel influences, collocated at the
panel centroids, with zero normal velocity there. The pressure is written as kinematic
gauge pressure ``p = q∞ Cp`` [m²/s²] with U∞ = 38.889 m/s, in the DrivAerML npz layout;
the wall shear columns are zero (potential flow has no boundary layer).

Output points are the cell centres of a finer mesh of the same smooth surface, with
pressure interpolated bilinearly in the surface parameters from the panel solution.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.interpolate import RegularGridInterpolator

from datamodules.drivaerml_io import PROXY_KEY, PROXY_LABEL, Q_INF, write_run_npz
from datamodules.progress import progress

SurfaceFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


# --- geometry ------------------------------------------------------------------------
def _spow(t: np.ndarray, exponent: float) -> np.ndarray:
    """Signed power ``sign(t) |t|^exponent`` (the superellipse building block)."""
    return np.sign(t) * np.abs(t) ** exponent


@dataclass(frozen=True)
class CarBody:
    """Parameters of one smooth car-like bluff body [m]; the flow runs along +x.

    The nose is at x = 0 and the tail at x = length; the floor is at z = clearance.
    ``nose_exp``/``rear_exp`` > 2 make the ends blunter, ``section_exp`` > 2 makes the
    cross-sections boxier, ``hood``/``boot`` lower the roof line near the ends.
    """

    length: float
    width: float
    height: float
    nose_frac: float
    nose_exp: float
    rear_exp: float
    section_exp: float
    hood: float
    boot: float
    clearance: float

    @classmethod
    def random(cls, rng: np.random.Generator) -> CarBody:
        """Draw a body with DrivAer-like overall size (about 4.6 x 1.9 x 1.4 m)."""
        return cls(
            length=rng.uniform(4.3, 4.9),
            width=rng.uniform(1.75, 2.05),
            height=rng.uniform(1.25, 1.5),
            nose_frac=rng.uniform(0.4, 0.5),
            nose_exp=rng.uniform(2.0, 3.5),
            rear_exp=rng.uniform(2.5, 6.0),
            section_exp=rng.uniform(2.5, 4.0),
            hood=rng.uniform(0.0, 0.35),
            boot=rng.uniform(0.0, 0.3),
            clearance=rng.uniform(0.1, 0.2),
        )

    def surface(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Points [..., 3] at u in [0, π] (nose -> tail) and v in [0, 2π) (around x).

        Both parameters are proportional to arc length along the base profile and the
        base cross-section, so a uniform (u, v) grid gives panels of even size.
        """
        half = 0.5 * (self.width + self.height) / 2
        t_u = _arc_length_inverse(lambda t: np.stack([self._x(t), half * self._ring(t)], -1), np.pi)
        t_v = _arc_length_inverse(lambda t: np.stack(self._section(t), -1), 2 * np.pi)
        return self._surface(t_u(u), t_v(v))

    def _ends(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        front = np.cos(t) >= 0
        return front, np.where(front, 2.0 / self.nose_exp, 2.0 / self.rear_exp)

    def _x(self, t: np.ndarray) -> np.ndarray:
        front, exp_x = self._ends(t)
        xi = _spow(np.cos(t), exp_x)  # 1 at the nose, -1 at the tail
        half_front, half_rear = self.nose_frac * self.length, (1 - self.nose_frac) * self.length
        return np.where(front, half_front * (1 - xi), half_front - half_rear * xi)

    def _ring(self, t: np.ndarray) -> np.ndarray:
        return np.abs(np.sin(t)) ** self._ends(t)[1]

    def _section(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        e = 2.0 / self.section_exp
        return 0.5 * self.width * _spow(np.cos(t), e), 0.5 * self.height * _spow(np.sin(t), e)

    def _surface(self, t: np.ndarray, w: np.ndarray) -> np.ndarray:
        x, ring = self._x(t), self._ring(t)
        s = x / self.length  # 0 at the nose, 1 at the tail
        dips = self.hood * np.exp(-(((s - 0.15) / 0.12) ** 2)) + self.boot * np.exp(-(((s - 0.92) / 0.1) ** 2))
        y, z = self._section(w)
        top, bottom = 1.2 * (1.0 - dips), 0.8  # roof above the widest line, flatter floor
        z = np.where(z >= 0, top, bottom) * z
        return np.stack([x, ring * y, ring * z + self.clearance + 0.4 * self.height], axis=-1)


def _arc_length_inverse(curve: Callable[[np.ndarray], np.ndarray], span: float, n: int = 4096):
    """Map s in [0, span] to the parameter t in [0, span] at which the arc length of
    ``curve`` ([n] -> [n, 2]) reaches s/span of its total."""
    t = np.linspace(0.0, span, n)
    pts = curve(t)
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=-1))])
    return lambda s: np.interp(np.asarray(s) / span * arc[-1], arc, t)


def sphere(radius: float = 1.0) -> SurfaceFn:
    """Sphere of ``radius`` centred at the origin, in the same (u, v) parametrisation."""

    def surface(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return radius * np.stack([-np.cos(u), np.sin(u) * np.cos(v), np.sin(u) * np.sin(v)], axis=-1)

    return surface


@dataclass
class ParametricMesh:
    """Triangulated closed surface from a (u, v) grid with a pole at each end of u.

    ``vertices`` [V, 3]; ``triangles`` [T, 3] int, outward-oriented; ``u``/``v`` the
    grid (u includes both poles, v excludes 2π); vertex (i, j) for 0 < i < n_u is
    ``1 + (i - 1) n_v + j``, vertex 0 the nose pole and V - 1 the tail pole.
    """

    vertices: np.ndarray
    triangles: np.ndarray
    u: np.ndarray
    v: np.ndarray


def parametric_mesh(surface: SurfaceFn, n_u: int, n_v: int) -> ParametricMesh:
    """Mesh ``surface`` with ``n_u`` intervals in u and ``n_v`` in v: 2 n_v (n_u - 1) triangles."""
    if n_u < 3 or n_v < 3:
        raise ValueError(f"parametric_mesh needs n_u >= 3 and n_v >= 3, got {n_u}, {n_v}")
    u = np.linspace(0.0, np.pi, n_u + 1)
    v = np.linspace(0.0, 2 * np.pi, n_v, endpoint=False)
    uu, vv = np.meshgrid(u[1:-1], v, indexing="ij")
    vertices = np.concatenate([surface(u[:1], v[:1]), surface(uu, vv).reshape(-1, 3), surface(u[-1:], v[:1])])
    rings = 1 + np.arange(n_u - 1)[:, None] * n_v + np.arange(n_v)  # [n_u - 1, n_v] vertex ids
    after = np.roll(rings, -1, axis=1)  # the next vertex around each ring
    last = len(vertices) - 1
    tris = [np.stack([np.zeros(n_v, int), after[0], rings[0]], 1)]
    for i in range(n_u - 2):
        tris += [np.stack([rings[i], after[i], rings[i + 1]], 1), np.stack([after[i], after[i + 1], rings[i + 1]], 1)]
    tris.append(np.stack([rings[-1], after[-1], np.full(n_v, last)], 1))
    triangles = np.concatenate(tris)
    p = vertices[triangles]
    volume = np.einsum("ij,ij->i", p[:, 0], np.cross(p[:, 1], p[:, 2])).sum() / 6.0
    if volume < 0:  # orientation depends on the handedness of the parametrisation
        triangles = triangles[:, ::-1].copy()
    return ParametricMesh(vertices, triangles, u, v)


# --- panel method ----------------------------------------------------------------------
def source_panel_velocity(points: np.ndarray, tri: np.ndarray, self_index: np.ndarray | None = None) -> np.ndarray:
    """Velocity [P, T, 3] induced at ``points`` [P, 3] by unit-strength source triangles ``tri`` [T, 3, 3].

    Exact for flat panels: ``v = (Ω n + Σ_edges m_k ln((r_k + r_k+1 + d_k)/(r_k + r_k+1 - d_k))) / 4π``
    with Ω the signed solid angle (van Oosterom-Strackee) and m_k the outward in-plane
    edge normals. ``self_index`` [P] (or -1) names the panel each point is the centroid
    of; there Ω is the outer-side limit 2π.
    """
    e = np.roll(tri, -1, axis=1) - tri  # [T, 3, 3] edges a_k -> a_k+1
    cross = np.cross(e[:, 0], -e[:, 2])
    normal = cross / np.linalg.norm(cross, axis=-1, keepdims=True)  # [T, 3]
    d = np.linalg.norm(e, axis=-1)  # [T, 3]
    m = np.cross(e / d[..., None], normal[:, None, :])  # [T, 3, 3]
    r_vec = tri[None] - points[:, None, None, :]  # [P, T, 3, 3]
    r = np.linalg.norm(r_vec, axis=-1)  # [P, T, 3]
    r_next = np.roll(r, -1, axis=2)
    log_term = np.log((r + r_next + d) / np.maximum(r + r_next - d, 1e-12 * d))  # [P, T, 3]
    r0, r1, r2 = r_vec[:, :, 0], r_vec[:, :, 1], r_vec[:, :, 2]
    num = np.einsum("ptc,ptc->pt", r0, np.cross(r1, r2))
    den = (
        r[..., 0] * r[..., 1] * r[..., 2]
        + np.einsum("ptc,ptc->pt", r0, r1) * r[..., 2]
        + np.einsum("ptc,ptc->pt", r0, r2) * r[..., 1]
        + np.einsum("ptc,ptc->pt", r1, r2) * r[..., 0]
    )
    omega = -2.0 * np.arctan2(num, den)  # [P, T], > 0 on the side normal points to
    if self_index is not None:
        rows = np.nonzero(self_index >= 0)[0]
        omega[rows, self_index[rows]] = 2.0 * np.pi
    vel = omega[..., None] * normal[None] + np.einsum("ptk,tkc->ptc", log_term, m)
    return vel / (4.0 * np.pi)


def panel_pressure(vertices: np.ndarray, triangles: np.ndarray, chunk: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Pressure coefficient at the panel centroids for unit free stream along +x.

    Solves ``Σ_j (n_i · v_ij) σ_j = -n_i · x̂`` for the source strengths, then
    ``Cp_i = 1 - |tangential velocity_i|²``. Returns (centroids [T, 3], Cp [T]).
    """
    tri = vertices[triangles]  # [T, 3, 3]
    centroids = tri.mean(axis=1)
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normal = cross / np.linalg.norm(cross, axis=-1, keepdims=True)
    n = len(tri)
    vel = np.empty((n, n, 3))
    for lo in range(0, n, chunk):
        hi = min(lo + chunk, n)
        vel[lo:hi] = source_panel_velocity(centroids[lo:hi], tri, np.arange(lo, hi))
    influence = np.einsum("ijc,ic->ij", vel, normal)
    sigma = np.linalg.solve(influence, -normal[:, 0])
    total = np.einsum("ijc,j->ic", vel, sigma)
    total[:, 0] += 1.0
    tangential = total - np.einsum("ic,ic->i", total, normal)[:, None] * normal
    return centroids, 1.0 - np.einsum("ic,ic->i", tangential, tangential)


def vertex_average(mesh: ParametricMesh, panel_values: np.ndarray) -> np.ndarray:
    """Area-weighted mean of the values of the panels around each vertex: [V]."""
    tri = mesh.vertices[mesh.triangles]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=-1)
    weight = np.zeros(len(mesh.vertices))
    total = np.zeros(len(mesh.vertices))
    for k in range(3):
        np.add.at(weight, mesh.triangles[:, k], area)
        np.add.at(total, mesh.triangles[:, k], area * panel_values)
    return total / weight


def grid_interpolator(mesh: ParametricMesh, vertex_values: np.ndarray) -> RegularGridInterpolator:
    """Bilinear interpolation of vertex values in (u, v), periodic in v, poles included."""
    n_u, n_v = len(mesh.u) - 1, len(mesh.v)
    grid = np.empty((n_u + 1, n_v + 1))
    grid[0], grid[-1] = vertex_values[0], vertex_values[-1]
    grid[1:-1, :-1] = vertex_values[1:-1].reshape(n_u - 1, n_v)
    grid[1:-1, -1] = grid[1:-1, 0]
    return RegularGridInterpolator((mesh.u, np.append(mesh.v, 2 * np.pi)), grid)


def sample_cell_centres(
    surface: SurfaceFn, n_u: int, n_v: int, count: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` distinct cell centres of the finest (n_u k) x (n_v k) parametric quad
    mesh with at least ``count`` cells: (points [count, 3], (u, v) [count, 2])."""
    k = max(1, int(np.ceil(np.sqrt(count / (n_u * n_v)))))
    cells = n_u * k * n_v * k
    pick = rng.choice(cells, size=count, replace=False)
    i, j = np.divmod(pick, n_v * k)
    uv = np.stack([(i + 0.5) * np.pi / (n_u * k), (j + 0.5) * 2 * np.pi / (n_v * k)], axis=-1)
    return surface(uv[:, 0], uv[:, 1]), uv


# --- generation --------------------------------------------------------------------------
def panel_grid(panels: int) -> tuple[int, int]:
    """(n_u, n_v) with about ``panels`` triangles, n_u ~ n_v: on car-sized bodies the
    arc-length parametrisation then gives cells of roughly square shape."""
    n_u = max(4, int(round(np.sqrt(panels / 2.0))))
    return n_u, max(6, int(round(panels / (2 * (n_u - 1)))))


def proxy_run(run_id: int, panels: int, points: int, seed: int) -> dict[str, np.ndarray]:
    """One body of the DrivAerML proxy (potential flow) in the DrivAerML npz layout.

    Returns ``surface_mesh_centers`` float32 [points, 3] [m], ``surface_fields`` float32
    [points, 4] = [p (kinematic, m²/s²), 0, 0, 0] and the ``proxy`` label.
    """
    rng = np.random.default_rng([seed, run_id])
    body = CarBody.random(rng)
    n_u, n_v = panel_grid(panels)
    mesh = parametric_mesh(body.surface, n_u, n_v)
    _, cp = panel_pressure(mesh.vertices, mesh.triangles)
    centres, uv = sample_cell_centres(body.surface, n_u, n_v, points, rng)
    cp_points = grid_interpolator(mesh, vertex_average(mesh, cp))(uv)
    fields = np.zeros((points, 4), dtype=np.float32)
    fields[:, 0] = Q_INF * cp_points
    params = ", ".join(f"{k}={v:.4g}" for k, v in asdict(body).items())
    return {
        "surface_mesh_centers": centres.astype(np.float32),
        "surface_fields": fields,
        PROXY_KEY: np.array(f"{PROXY_LABEL}; run {run_id}; {n_u}x{n_v} grid, {len(mesh.triangles)} panels; {params}"),
    }


def generate_proxy_runs(folder: str | Path, run_ids: list[int], panels: int, points: int, seed: int) -> list[Path]:
    """Write ``folder/run_<i>.npz`` for each missing run id (each file atomically): resumable."""
    folder = Path(folder)
    written = []
    for run_id in progress(run_ids, f"{PROXY_LABEL} bodies ({folder.name})", total=len(run_ids)):
        path = folder / f"run_{run_id}.npz"
        if not path.exists():
            write_run_npz(path, proxy_run(run_id, panels, points, seed))
            written.append(path)
    return written
