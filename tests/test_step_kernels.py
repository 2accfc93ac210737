"""benchmarks/step_kernels.py: kernels go to the right group and the breakdown adds up (the profile
itself needs a GPU: tests/test_benchmark_records_gpu.py runs it there)."""

from __future__ import annotations

import pytest

from benchmarks.step_kernels import breakdown, group_of


@pytest.mark.parametrize("name, group", [
    ("mlp_bwd_kernel", "fused MLP backward"),
    ("mlp_bwd_da_kernel", "fused MLP backward"),  # the split backward's row pass
    ("mlp_dw_kernel", "fused MLP backward"),  # and its weight-gradient GEMM
    ("mlp_fwd_kernel", "fused MLP forward"),
    ("void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<float, float>", "ATen LayerNorm"),
    ("_bwd_encode_kernel", "mixer backward"),
    ("_dq_sum_kernel", "mixer backward"),
    ("_encode_partial_kernel", "mixer forward"),
    ("_decode_fwd_kernel", "mixer forward"),
    ("triton_poi_fused__to_copy_add_mul_0", "Inductor kernels"),
    ("triton_red_fused_native_layer_norm_1", "Inductor kernels"),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64", "cuBLAS GEMM"),
    ("nvjet_tst_128x64_64x8_1x1_v_bz_coopB_TNT", "cuBLAS GEMM"),
    ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<...>", "optimizer and clipping"),
    ("void at::native::vectorized_elementwise_kernel<4, ...>", "ATen pointwise and reductions"),
    ("pytorch_flash::flash_fwd_kernel<...>", "SDPA (reference)"),
    ("some_new_kernel", "other"),
])
def test_each_kernel_goes_to_its_group(name, group):
    assert group_of(name) == group


def test_the_breakdown_sums_groups_per_step_and_ranks_kernels():
    times = {"mlp_bwd_kernel": [300.0] * 6, "mlp_fwd_kernel": [90.0] * 6, "_bwd_encode_kernel": [200.0] * 3,
             "triton_poi_fused_add_0": [50.0] * 3}
    rows = breakdown(times, steps=3, top=2)
    groups = [r for r in rows if r["kernel"] is None]
    assert [r["group"] for r in groups] == ["fused MLP backward", "mixer backward", "fused MLP forward",
                                           "Inductor kernels"]
    assert groups[0]["ms_per_step"] == pytest.approx(0.6) and groups[0]["calls_per_step"] == 2
    assert sum(r["share"] for r in groups) == pytest.approx(1.0)
    assert [r["kernel"] for r in rows if r["kernel"]] == ["mlp_bwd_kernel", "_bwd_encode_kernel"]
