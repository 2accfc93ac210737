"""LPBF proxy made here: real file layout, hexahedral connectivity and solver physics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.ndimage as ndi

import datamodules.lpbf_generate as gen
from datamodules.lpbf_generate import (
    INHERENT_STRAIN,
    generate_lpbf_proxy,
    hex_connectivity,
    random_part,
    solve_inherent_strain,
    voxel_mesh,
)

GRID = (5, 5, 4)
VOXEL = 2.5


@pytest.fixture(scope="session")
def proxy_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lpbf") / "train"
    generate_lpbf_proxy(folder, 3, seed=0, grid=GRID, voxel_size=VOXEL)
    return folder


def load(path) -> dict:
    with np.load(path, allow_pickle=True) as npz:
        return {k: npz[k] for k in npz.files}


def test_files_have_the_real_layout(proxy_dir):
    files = sorted(proxy_dir.glob("case*.npz"))
    assert [f.name for f in files] == [f"case{i:05d}_lpbfproxy.npz" for i in range(3)]
    for path in files:
        case = load(path)
        assert set(case) == {"pos", "elems", "edge_index", "disp", "vmstr", "temp", "_metadata"}
        n = case["pos"].shape[0]
        assert case["pos"].dtype == np.float32 and case["pos"].shape == (n, 3)
        assert case["elems"].dtype == np.int32 and case["elems"].shape[1] == 8
        assert case["edge_index"].dtype == np.int64 and case["edge_index"].shape[0] == 2
        for key, width in (("disp", 3), ("vmstr", 1), ("temp", 1)):
            assert case[key].dtype == np.float32 and case[key].shape == (n, width), key
            assert np.isfinite(case[key]).all()
        meta = json.loads(case["_metadata"][0])["metadata"]
        assert "LPBF proxy" in meta["source"] and "NOT LPBF" in meta["source"]
        assert meta["zmax"] == pytest.approx(case["pos"][:, 2].max())
        # inside the build volume the real data is scaled by, standing on the plate
        assert (np.abs(case["pos"][:, :2]) <= 30).all() and case["pos"][:, 2].min() == 0 and case["pos"][:, 2].max() <= 60


def test_hexahedra_are_in_vtk_order_and_edges_match(proxy_dir):
    case = load(sorted(proxy_dir.glob("case*.npz"))[0])
    pos, elems, edges = case["pos"], case["elems"], case["edge_index"]
    corners = pos[elems]  # [E, 8, 3]
    offsets = (corners - corners[:, :1]) / VOXEL
    unit = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1], [1, 0, 1], [1, 1, 1], [0, 1, 1]])
    np.testing.assert_allclose(offsets, np.broadcast_to(unit, offsets.shape), atol=1e-5)
    assert np.unique(elems).size == pos.shape[0]  # every node belongs to an element
    pairs = {tuple(e) for e in edges.T}
    assert all((b, a) in pairs for a, b in pairs)  # undirected
    assert (np.diff(edges[0] * pos.shape[0] + edges[1]) > 0).all()  # sorted, no duplicates
    lengths = np.linalg.norm(pos[edges[0]] - pos[edges[1]], axis=1)
    np.testing.assert_allclose(lengths, VOXEL, rtol=1e-5)  # only hexahedron edges, no diagonals


def test_clamped_plate_holds_and_part_shrinks(proxy_dir):
    for path in sorted(proxy_dir.glob("case*.npz")):
        case = load(path)
        on_plate = case["pos"][:, 2] == 0
        assert on_plate.any()
        np.testing.assert_array_equal(case["disp"][on_plate], 0.0)
        top = case["pos"][:, 2] == case["pos"][:, 2].max()
        assert (case["disp"][top, 2] < 0).all()  # vertical shrinkage pulls the top down
        assert case["vmstr"].max() > 0


def test_free_part_takes_the_eigenstrain_exactly():
    """On rollers the eigenstrain is compatible, so u = ε* (x - x0) and the part is stress-free:
    a wrong stiffness, load vector or stress recovery breaks this patch test."""
    mesh = voxel_mesh(random_part(np.random.default_rng(3), GRID), VOXEL)
    u, vm = solve_inherent_strain(mesh, support="roller")
    base = np.flatnonzero(mesh.p[2] == 0)
    origin = base[np.lexsort((mesh.p[0, base], mesh.p[1, base]))[0]]
    exact = np.array(INHERENT_STRAIN)[:, None] * (mesh.p - mesh.p[:, [origin]])
    np.testing.assert_allclose(u.T, exact, atol=1e-9)
    assert vm.max() < 1e-6 * 110e3 * 0.02
    u_clamped, vm_clamped = solve_inherent_strain(mesh)
    assert vm_clamped.max() > 100.0  # the clamp restrains shrinkage: MPa-level stress


def test_parts_are_connected_to_the_plate_and_vary():
    rng = np.random.default_rng(0)
    parts = [random_part(rng, (8, 8, 8)) for _ in range(6)]
    for occ in parts:
        assert occ[:, :, 0].any()
        assert ndi.label(occ)[1] == 1  # one piece
        mesh = voxel_mesh(occ, VOXEL)
        elems, _ = hex_connectivity(mesh)
        assert elems.shape[0] == occ.sum()
    assert len({int(p.sum()) for p in parts}) > 3


def test_workers_give_the_same_files(proxy_dir, tmp_path):
    generate_lpbf_proxy(tmp_path / "train", 3, seed=0, workers=2, grid=GRID, voxel_size=VOXEL)
    for a, b in zip(sorted(proxy_dir.glob("*.npz")), sorted((tmp_path / "train").glob("*.npz"))):
        left, right = load(a), load(b)
        for key in ("pos", "elems", "edge_index", "disp", "vmstr"):
            np.testing.assert_array_equal(left[key], right[key])


def test_crash_leaves_no_folder(tmp_path, monkeypatch):
    real = gen.lpbf_proxy_case

    def crash_on_third(index, *args, **kw):
        if index == 2:
            raise RuntimeError("solver died")
        return real(index, *args, **kw)

    monkeypatch.setattr(gen, "lpbf_proxy_case", crash_on_third)
    with pytest.raises(RuntimeError, match="solver died"):
        generate_lpbf_proxy(tmp_path / "train", 3, grid=GRID)
    assert list(tmp_path.iterdir()) == []  # neither train/ nor a temporary folder
    with pytest.raises(FileExistsError, match="already holds files"):
        (tmp_path / "test").mkdir()
        (tmp_path / "test" / "x.npz").write_bytes(b"")
        generate_lpbf_proxy(tmp_path / "test", 1, grid=GRID)
