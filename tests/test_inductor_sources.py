"""Kernel tables say which model operations an Inductor kernel fused: read back from the code
Inductor wrote, only code written since the run began."""

from __future__ import annotations

import os
import time

from tests.helpers import import_benchmark

GENERATED = '''
def call(args):
    buf0 = empty_strided_cuda((1, 1048576, 64), (67108864, 64, 1), torch.bfloat16)
    # Topologically Sorted Source Nodes: [x_1, add], Original ATen: [aten.view, aten.add]
    stream0 = get_raw_stream(0)
    triton_poi_fused_add_view_4.run(buf0, primals_2, 67108864, stream=stream0)
    # Topologically Sorted Source Nodes: [out_proj], Original ATen: [aten.addmm]
    extern_kernels.addmm(primals_3, buf0, primals_4, out=buf1)
    # Topologically Sorted Source Nodes: [norm], Original ATen: [aten.native_layer_norm]
    triton_per_fused_native_layer_norm_0.run(buf1, buf2, 1048576, 64, stream=stream0)
'''


def test_kernels_are_named_by_the_operations_they_fused(tmp_path):
    sources = import_benchmark("inductor_sources")
    start = time.time()
    (tmp_path / "ab").mkdir()
    (tmp_path / "ab" / "fresh.py").write_text(GENERATED)
    stale = tmp_path / "ab" / "stale.py"
    stale.write_text(GENERATED.replace("[x_1, add]", "[old]"))
    os.utime(stale, (start - 3600, start - 3600))  # an earlier run's graph of the same kernel name
    found = sources.kernel_sources(["triton_poi_fused_add_view_4", "triton_per_fused_native_layer_norm_0", "missing"],
                                   since=start, root=tmp_path)
    assert found == {"triton_poi_fused_add_view_4": "x_1, add <- aten.view, aten.add",
                     "triton_per_fused_native_layer_norm_0": "norm <- aten.native_layer_norm"}
    assert sources.kernel_sources(["x"], since=start, root=tmp_path / "absent") == {}


def test_the_comment_format_is_the_one_this_torch_writes():
    """Inductor's Triton wrapper writes ``get_kernel_metadata``'s line before each launch (C++ kernels
    on the CPU get none, so a CPU compile cannot show it): the format read here is the one it builds."""
    import inspect

    from torch._inductor import utils

    source = inspect.getsource(utils.get_kernel_metadata)
    assert 'Source Nodes: [{' in source and '], "' in source and 'Original ATen: [{' in source
    line = "    # Topologically Sorted Source Nodes: [h, a_1], Original ATen: [aten.gelu, aten.add]"
    match = import_benchmark("inductor_sources").COMMENT.search(line)
    assert match and match.groups() == ("h, a_1", "aten.gelu, aten.add")
