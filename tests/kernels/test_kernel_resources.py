"""Every mixer kernel compiles for a Hopper GPU (sm_90) on this CPU box, with the registers its
launch config caps: a kernel change that would fail on the device fails here first."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import REPO

pytest.importorskip("triton")
KERNELS = ["_encode_partial_kernel", "_encode_merge_kernel", "_decode_fwd_kernel", "_bwd_decode_kernel",
           "_bwd_latent_grad_kernel", "_bwd_encode_kernel", "_dq_sum_kernel"]


@pytest.mark.parametrize("m, d, dtype, cap", [(256, 4, "bfloat16", 128), (64, 8, "bfloat16", None),
                                             (48, 16, "float32", None)])
def test_kernels_compile_for_sm90(m, d, dtype, cap):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {"PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "kernel_resources.py"), "--m", str(m),
                          "--d", str(d), "--dtype", dtype], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {line.split()[0]: [int(x) for x in line.split()[1:]] for line in out.stdout.splitlines()
            if line.startswith("_")}
    assert list(rows) == KERNELS
    for name, (registers, _stack, _local, _shared) in rows.items():
        assert 0 < registers <= 255, name
    if cap is not None:  # default_config caps the backward kernels' registers for small heads
        assert rows["_bwd_decode_kernel"][0] <= cap and rows["_bwd_encode_kernel"][0] <= cap


def test_every_fused_mlp_launch_of_the_sweep_compiles_for_sm90():
    """Each configuration of ``benchmarks/mlp.py --sweep`` (recomputing or reading the kept
    inputs, every backward segment), and the shipped ones with the opt-in folds, compiles for sm_90
    within the register file."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {"PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "kernel_resources.py"), "--mlp"],
                         capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    tables: dict[str, list[list[str]]] = {}
    for line in out.stdout.splitlines():
        if line.startswith("fused"):
            tables[line] = []
        elif line.startswith("  "):
            tables[list(tables)[-1]].append(line.split())
    assert "fused" in tables and any(name.startswith("fused stored") for name in tables)
    for name, kernels in tables.items():
        assert kernels[0][0] == "forward", name
        if kernels[1][1] == "row":  # the two-kernel backward: a row pass over all layers, then the GEMM
            expected = ["backward row pass", "backward weight GEMM"]
            if name.endswith("LN(x) recomputed"):  # layer 0's weight gradient in a launch of its own
                expected.append("backward weight GEMM, layer 0 from x")
            assert [" ".join(k[:-3]) for k in kernels[1:]] == expected, name
        else:  # layer segments: FLARE's 5-layer MLP, each layer once
            layers = [layer for k in kernels[1:] for layer in range(int(k[1].split("-")[0]), int(k[1].split("-")[1]) + 1)]
            assert sorted(layers) == [0, 1, 2, 3, 4], (name, kernels)
        for k in kernels:
            assert 0 < int(k[-3]) <= 255, (name, k)


def test_every_mixer_tune_candidate_is_compiled_for_sm90():
    """``--tune``: each tiled kernel at the default and at every candidate of ``mixer_tune.py``,
    one row each with its registers and spills (or why it does not compile)."""
    from benchmarks.mixer_tune import ROLES, candidates

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {"PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "kernel_resources.py"), "--tune", "--m", "64",
                          "--d", "8"], capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line.split(None, 1) for line in out.stdout.splitlines() if line.split(None, 1)[0] in ROLES]
    for role in ROLES:
        found = [rest for name, rest in rows if name == role]
        assert len(found) >= len(candidates(64, role)), role  # the default first, unless it is a candidate too
        for rest in found:
            if not rest.split()[-1].isdigit():  # does not compile: its row names the error instead
                continue
            registers = int(rest.rsplit(None, 2)[-2])
            assert 0 < registers <= 255, (role, rest)
