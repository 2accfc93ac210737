"""Compile the mixer's Triton kernels for a Hopper GPU without one, and print their resources.

Each kernel is compiled for sm_90 (``triton.compile`` with ``GPUTarget("cuda", 90, 32)``,
Triton's bundled ptxas) with the tile sizes, stages, warps and register caps that
``default_config(M, D, dtype)`` picks, and ``cuobjdump`` reports registers, spill stack and
shared memory. A kernel that does not compile for the GPU fails here, on the CPU box, instead
of in a device session (benchmarks/NOTES_mixer.md, v0). Needs no GPU; must run without
``TRITON_INTERPRET``.

    python benchmarks/kernel_resources.py --m 256 --d 4          # Darcy's heads (H16, C64)
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import subprocess
import tempfile

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from flare_lightning.kernels import triton_mixer as tm
from flare_lightning.kernels import triton_mixer_bwd as kb
from flare_lightning.kernels import triton_mixer_fwd as kf

# Pointer arguments in the inputs' dtype, per kernel; other pointers are fp32, masks uint8.
LOW = {
    "_encode_partial_kernel": {"q_ptr", "k_ptr", "v_ptr"},
    "_encode_merge_kernel": {"z_lo_ptr"},
    "_decode_fwd_kernel": {"q_ptr", "z_ptr", "k_ptr", "y_ptr"},
    "_bwd_decode_kernel": {"q_ptr", "k_ptr", "y_ptr", "dy_ptr", "z_ptr", "dk_ptr"},
    "_bwd_latent_grad_kernel": {"dz_lo_ptr"},
    "_bwd_encode_kernel": {"q_ptr", "k_ptr", "v_ptr", "dz_ptr", "dk_ptr", "dv_ptr"},
    "_dq_sum_kernel": {"dq_ptr"},
}
FLOATS = {"qk_scale", "scale"}
TYPE = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


def _signature(kernel, low: str, constexprs: dict) -> tuple[dict, dict]:
    names = list(inspect.signature(kernel.fn).parameters)
    sig = {}
    for name in names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = "*u8" if name == "mask_ptr" else f"*{low}" if name in LOW[kernel.fn.__name__] else "*fp32"
        else:
            sig[name] = "fp32" if name in FLOATS else "i32"
    return sig, {(names.index(k),): v for k, v in constexprs.items()}


def resources(kernel, dtype: torch.dtype, constexprs: dict, launch: dict) -> dict[str, int]:
    """Compile ``kernel`` for sm_90; returns cuobjdump's REG, STACK, SHARED, LOCAL."""
    sig, const = _signature(kernel, TYPE[dtype], constexprs)
    compiled = triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=const),
                              target=GPUTarget("cuda", 90, 32), options=launch)
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        report = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True,
                                check=True).stdout
    return {key: int(value) for key, value in re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", report)}


def kernel_table(m: int, d: int, dtype: torch.dtype = torch.bfloat16) -> dict[str, dict[str, int]]:
    """Resources of all seven kernels at ``default_config(m, d, dtype)``."""
    cfg = tm.default_config(m, d, dtype)
    bd = tm._pow2(d)
    align = min(d & -d, 16 // (torch.finfo(dtype).bits // 8))  # row alignment in elements, as _align finds
    prec = "ieee" if dtype == torch.float32 else "tf32"
    join = dict(M=m, D=d, **tm.join_tiles(bd))
    small = {"num_warps": 4, "num_stages": 2}

    def tiles(k: tm.KernelConfig) -> dict:
        return dict(M=m, D=d, ALIGN=align, PREC=prec, BLOCK_N=k.block_n, BLOCK_M=k.block_m, BLOCK_D=bd)

    masks = dict(HAS_KEYMASK=True, HAS_MASK=True)
    runs = {
        "_encode_partial_kernel": (kf._encode_partial_kernel, tiles(cfg.encode) | masks, cfg.encode),
        "_encode_merge_kernel": (kf._encode_merge_kernel, join, None),
        "_decode_fwd_kernel": (kf._decode_fwd_kernel, tiles(cfg.decode) | {"NUM_M_TILES": -(-m // cfg.decode.block_m)},
                               cfg.decode),
        "_bwd_decode_kernel": (kb._bwd_decode_kernel,
                               tiles(cfg.bwd_decode) | {"NUM_M_TILES": -(-m // cfg.bwd_decode.block_m)}, cfg.bwd_decode),
        "_bwd_latent_grad_kernel": (kb._bwd_latent_grad_kernel, join, None),
        "_bwd_encode_kernel": (kb._bwd_encode_kernel,
                               tiles(cfg.bwd_encode) | masks | {"NUM_M_TILES": -(-m // cfg.bwd_encode.block_m)},
                               cfg.bwd_encode),
        "_dq_sum_kernel": (kb._dq_sum_kernel, join, None),
    }
    table = {}
    for name, (kernel, constexprs, k) in runs.items():
        launch = k.launch_options() if k is not None else small
        table[name] = resources(kernel, dtype, constexprs, launch)
    return table


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--m", type=int, default=256, help="latents M")
    parser.add_argument("--d", type=int, default=4, help="head dim D")
    parser.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("kernel_resources.py compiles for the GPU: unset TRITON_INTERPRET")
    table = kernel_table(args.m, args.d, getattr(torch, args.dtype))
    print(f"sm_90, M={args.m} D={args.d} {args.dtype}, default_config tiles")
    print(f"{'kernel':<26}{'registers':>10}{'spill stack B':>14}{'local B':>9}{'shared B':>10}")
    for name, r in table.items():
        print(f"{name:<26}{r.get('REG', 0):>10}{r.get('STACK', 0):>14}{r.get('LOCAL', 0):>9}{r.get('SHARED', 0):>10}")
    return table


if __name__ == "__main__":
    main()
