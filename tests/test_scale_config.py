"""configs/drivaerml_1m.yaml end to end on tiny files in the real DrivAerML layout:
per-epoch point subsampling, bf16, chunked MLPs in training (the fused kernels are GPU-only),
chunked full-resolution evaluation."""

from __future__ import annotations

import json
import math

import numpy as np
import torch

from tests.helpers import CONFIGS, run_cli, tiny_trainer_args


def write_runs(root, name: str, ids: list[int], points: int = 300) -> None:
    for i in ids:
        rng = np.random.default_rng(i)
        centres = rng.uniform(-1, 4, size=(points, 3)).astype(np.float32)
        fields = rng.normal(0, 1, size=(points, 4)).astype(np.float32)
        (root / name).mkdir(parents=True, exist_ok=True)
        np.savez(root / name / f"run_{i}.npz", surface_mesh_centers=centres, surface_fields=fields)


def test_drivaerml_1m_config_trains_subsampled_and_evaluates_full_resolution(tmp_path):
    root = tmp_path / "drivaerml"
    write_runs(root, "train", [1, 2, 3, 4])
    write_runs(root, "test", [7, 9])
    cli = run_cli([
        "fit",
        f"--config={CONFIGS / 'drivaerml_1m.yaml'}",
        *tiny_trainer_args(tmp_path, "scale"),
        f"--data.init_args.root={root}",
        "--data.init_args.n_val=1",
        "--data.init_args.train_points=64",  # of 300 per run: subsampled each epoch
        "--data.init_args.num_workers=0",
        "--model.model.init_args.num_blocks=2",
        "--model.model.init_args.num_latents=16",
        "--model.model.init_args.mlp_chunk_size=32",
        "--model.model.init_args.eval_chunk_size=50",  # 300-point runs evaluated in 6 chunks
        "--model.model.init_args.compile=false",  # Inductor on the CPU costs minutes here, not what is tested
        "--trainer.accelerator=cpu",
        "--trainer.max_epochs=1",
    ])
    assert cli.trainer.precision == "bf16-mixed"
    model = cli.model.model
    assert model.eval_chunk_size == 50 and not model.checkpoint_blocks
    assert all(block.mlp_backend == "auto" for block in model.blocks)  # fused kernels on GPUs
    mlps = [m for block in model.blocks for m in (block.attn.k_proj, block.attn.v_proj, block.mlp)]
    assert all(m.store_hidden for m in mlps)  # their backward reads the kept layer inputs
    assert not model.blocks[0].fused(torch.zeros(1, 4, 64))  # plain layers on the CPU
    dm = cli.datamodule
    dm.setup("fit")
    assert dm.datasets["train"][0].num_nodes == 64
    metrics = json.loads(next((tmp_path / "scale").glob("version_*/test_metrics.json")).read_text())
    assert "test/rel_l2" in metrics and all(v is not None and math.isfinite(v) for k, v in metrics.items() if k.startswith("test/"))


def test_benchmark_reference_formulation_is_the_same_model():
    """benchmarks/reference_flare.py (the baseline of benchmarks/step.py) has FLARE's
    parameters and, with FLARE's weights loaded, computes the same function."""
    import torch

    from benchmarks.reference_flare import ReferenceFLARE
    from flare_lightning.models import FLARE

    assert sum(p.numel() for p in ReferenceFLARE(2, 1).parameters()) == 592_641
    torch.manual_seed(0)
    ours = FLARE(3, 1, channels=16, num_blocks=2, num_heads=4, num_latents=8, mixer_backend="explicit").double()
    ref = ReferenceFLARE(3, 1, c=16, blocks=2, heads=4, latents=8).double().load_from(ours)
    x = torch.randn(2, 40, 3, dtype=torch.float64)
    torch.testing.assert_close(ref(x), ours(x), rtol=1e-10, atol=1e-12)


def test_drivaerml_1m_data_path_runs_in_pinned_prefetching_workers():
    """The 1M config keeps the data off the GPU's critical path: several persistent workers
    subsample and collate ahead, into page-locked batches."""
    from tests.helpers import resolved_config

    data = resolved_config([f"--config={CONFIGS / 'drivaerml_1m.yaml'}"])["data"]["init_args"]
    assert data["num_workers"] >= 4 and data["prefetch_factor"] >= 2
    assert data["persistent_workers"] is True and data["pin_memory"] is True
    assert data["train_points"] == 2**20 and data["num_points"] is None  # subsampled per step, evaluated in full
