"""Fields on point clouds and meshes: prediction / target / error panels and latent
attention maps. 2-D points: colour maps on a Delaunay triangulation (triangles that
bridge holes masked); 3-D points: coloured surface scatter; 1-D: line plots."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure
from matplotlib.tri import Triangulation
from torch import Tensor


@dataclass
class FieldSample:
    """One sample on its real points: ``pos`` [n, d], ``pred`` and ``target`` [n, C]."""

    pos: np.ndarray
    pred: np.ndarray
    target: np.ndarray
    sample_id: int = 0


def samples_from_batch(pred: Tensor, batch: dict[str, Tensor]) -> list[FieldSample]:
    """Split a padded batch (``pos`` [B, N, d], ``y`` [B, N, C], ``mask``, ``sample_id``)
    and its prediction [B, N, C] into per-sample fields on their real points."""
    out = []
    for i in range(pred.shape[0]):
        m = batch["mask"][i]
        out.append(
            FieldSample(
                pos=batch["pos"][i][m].detach().float().cpu().numpy(),
                pred=pred[i][m].detach().float().cpu().numpy(),
                target=batch["y"][i][m].detach().float().cpu().numpy(),
                sample_id=int(batch["sample_id"][i]),
            )
        )
    return out


def triangulate(pos: np.ndarray, max_edge_factor: float = 4.0) -> Triangulation:
    """Delaunay triangulation of 2-D points [n, 2]; triangles with an edge longer than
    ``max_edge_factor`` times the median edge are masked, so holes and concave
    boundaries are not painted over."""
    tri = Triangulation(pos[:, 0], pos[:, 1])
    corners = pos[tri.triangles]  # [T, 3, 2]
    edges = np.linalg.norm(corners - np.roll(corners, 1, axis=1), axis=-1).max(axis=1)  # [T]
    tri.set_mask(edges > max_edge_factor * np.median(edges))
    return tri


def _field_axes(fig: Figure, rows: int, cols: int, dim: int) -> np.ndarray:
    """[rows, cols] axes, 3-D ones for 3-D points."""
    projection = "3d" if dim == 3 else None
    return np.array(
        [[fig.add_subplot(rows, cols, r * cols + c + 1, projection=projection) for c in range(cols)] for r in range(rows)]
    )


def draw_field(ax, pos: np.ndarray, values: np.ndarray, tri: Triangulation | None = None, **style):
    """Draw ``values`` [n] at ``pos`` [n, d] on ``ax``; returns the mappable (for a colour bar)."""
    dim = pos.shape[1]
    if dim == 1:
        order = np.argsort(pos[:, 0])
        ax.plot(pos[order, 0], values[order], color="C0")
        return None
    if dim == 2:
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        return ax.tripcolor(tri if tri is not None else triangulate(pos), values, shading="gouraud", **style)
    if dim == 3:
        ax.set_axis_off()
        return ax.scatter(pos[:, 0], pos[:, 1], pos[:, 2], c=values, s=2, linewidths=0, **style)
    raise ValueError(f"can only draw fields on 1-, 2- or 3-D points, got pos with {dim} coordinates")


def plot_predictions(samples: Sequence[FieldSample], channel: int = 0, cmap: str = "viridis") -> Figure:
    """One row per sample: prediction, target (shared colour scale) and signed error
    ``pred - target`` (symmetric diverging scale), with the sample's relative L2 error."""
    dim = samples[0].pos.shape[1]
    fig = Figure(figsize=(10.5, 3.2 * len(samples)), layout="constrained")
    axes = _field_axes(fig, len(samples), 3, dim)
    for row, s in zip(axes, samples):
        pred, target = s.pred[:, channel], s.target[:, channel]
        err = pred - target
        rel = np.linalg.norm(s.pred - s.target) / max(np.linalg.norm(s.target), 1e-30)
        tri = triangulate(s.pos) if dim == 2 else None
        lo, hi = float(min(pred.min(), target.min())), float(max(pred.max(), target.max()))
        emax = float(np.abs(err).max()) or 1.0
        panels = (
            (pred, f"sample {s.sample_id}: prediction", {"cmap": cmap, "vmin": lo, "vmax": hi}),
            (target, "target", {"cmap": cmap, "vmin": lo, "vmax": hi}),
            (err, f"error (rel. L2 {rel:.2e})", {"cmap": "RdBu_r", "vmin": -emax, "vmax": emax}),
        )
        for ax, (values, title, style) in zip(row, panels):
            mappable = draw_field(ax, s.pos, values, tri, **(style if dim > 1 else {}))
            ax.set_title(title, fontsize="medium")
            if mappable is not None:
                fig.colorbar(mappable, ax=ax, shrink=0.8)
    return fig


def plot_latent_maps(pos: np.ndarray, maps: np.ndarray, titles: Sequence[str] | None = None, cols: int = 4) -> Figure:
    """Latent-to-point attention maps [k, n] (rows of ``W_enc``) drawn on the points [n, d]."""
    k, dim = maps.shape[0], pos.shape[1]
    rows = -(-k // cols)
    fig = Figure(figsize=(3.0 * min(k, cols), 2.8 * rows), layout="constrained")
    axes = _field_axes(fig, rows, min(k, cols), dim).ravel()
    tri = triangulate(pos) if dim == 2 else None
    for i, ax in enumerate(axes):
        if i >= k:
            ax.set_visible(False)
            continue
        draw_field(ax, pos, maps[i], tri, **({"cmap": "magma"} if dim > 1 else {}))
        ax.set_title(titles[i] if titles else f"latent {i}", fontsize="small")
    return fig
