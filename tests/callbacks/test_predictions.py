"""PredictionPlots and the field plots behind it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mpl_toolkits.mplot3d import Axes3D

from flare_lightning.analysis.fields import FieldSample, plot_latent_maps, plot_predictions, samples_from_batch, triangulate
from tests.quickstart_run import EPOCHS, quickstart_run  # noqa: F401  (session fixture)

PNG = b"\x89PNG\r\n\x1a\n"


def test_fit_and_test_leave_prediction_pngs(quickstart_run):
    folder = quickstart_run / "predictions"
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted([f"epoch_{e:04d}.png" for e in range(EPOCHS)] + ["test.png"])
    for name in names:
        data = (folder / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000


def annulus(n: int = 400, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    r = np.sqrt(rng.uniform(0.3**2, 1.0, n))
    t = rng.uniform(0, 2 * np.pi, n)
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def test_triangulation_leaves_holes_empty():
    pos = annulus()
    tri = triangulate(pos, max_edge_factor=2.5)
    kept = tri.triangles[~tri.mask]
    centroids = pos[kept].mean(axis=1)
    assert np.linalg.norm(centroids, axis=1).min() > 0.2  # nothing painted inside r < 0.3
    assert tri.mask.sum() > 0 and len(kept) > 0.8 * len(tri.triangles)


def sample(dim: int, n: int = 300, seed: int = 0) -> FieldSample:
    rng = np.random.default_rng(seed)
    pos = rng.uniform(size=(n, dim))
    target = np.sin(3 * pos.sum(1, keepdims=True))
    return FieldSample(pos=pos, pred=target + 0.1 * rng.normal(size=target.shape), target=target, sample_id=seed)


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_prediction_figure_has_three_panels_per_sample(dim):
    fig = plot_predictions([sample(dim, seed=0), sample(dim, seed=1)])
    field_axes = [ax for ax in fig.axes if ax.get_title()]  # colour bars have no title
    assert len(field_axes) == 6
    assert all(isinstance(ax, Axes3D) for ax in field_axes) == (dim == 3)
    assert "error (rel. L2" in field_axes[2].get_title()
    rel = float(field_axes[2].get_title().split()[-1].rstrip(")"))
    s = sample(dim, seed=0)
    assert rel == pytest.approx(np.linalg.norm(s.pred - s.target) / np.linalg.norm(s.target), rel=1e-2)


def test_samples_from_batch_drops_padding():
    mask = torch.tensor([[True, True, True], [True, True, False]])
    batch = {"pos": torch.rand(2, 3, 2), "y": torch.rand(2, 3, 1), "mask": mask, "sample_id": torch.tensor([7, 9])}
    pred = torch.rand(2, 3, 1)
    samples = samples_from_batch(pred, batch)
    assert [s.pos.shape[0] for s in samples] == [3, 2] and [s.sample_id for s in samples] == [7, 9]
    np.testing.assert_array_equal(samples[1].pred, pred[1, :2].numpy())


def test_latent_maps_figure_hides_unused_panels():
    pos = np.random.default_rng(0).uniform(size=(100, 2))
    fig = plot_latent_maps(pos, np.random.default_rng(1).uniform(size=(5, 100)), cols=4)
    assert sum(ax.get_visible() for ax in fig.axes) == 5
