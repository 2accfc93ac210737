"""Compile the mixer's (or, with ``--mlp``, the fused MLP's) Triton kernels for a Hopper GPU
without one, and print their resources.

Each kernel is compiled for sm_90 (``triton.compile`` with ``GPUTarget("cuda", 90, 32)``,
Triton's bundled ptxas) with the tile sizes, stages, warps and register caps that
``default_config(M, D, dtype)`` picks, and ``cuobjdump`` reports registers, spill stack and
shared memory. A kernel that does not compile for the GPU fails here, on the CPU box, instead
of in a device session (benchmarks/NOTES_mixer.md, v0). Needs no GPU; must run without
``TRITON_INTERPRET``.

    python benchmarks/kernel_resources.py --m 256 --d 4          # Darcy's heads (H16, C64)
    python benchmarks/kernel_resources.py --mlp                  # every launch of benchmarks/mlp.py's sweep
    python benchmarks/kernel_resources.py --tune --m 256 --d 8   # every tile mixer_tune.py would try there

With ``--mlp`` each configuration of ``benchmarks/mlp.py``'s sweep is compiled as it launches at
C = 64 with 5 layers (FLARE's MLPs: 3 hidden): the forward (keeping the layers' inputs or not) and each
backward segment, so a configuration that spills or does not compile is seen before a device run.
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from flare_lightning.kernels import triton_mixer as tm
from flare_lightning.kernels.dot_precision import dot_type, input_precision
from flare_lightning.kernels import triton_mlp
from flare_lightning.kernels import triton_mlp_kernels as km
from flare_lightning.kernels import triton_mixer_bwd as kb
from flare_lightning.kernels import triton_mixer_fwd as kf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: `benchmarks.` imports resolve

# Pointer arguments in the inputs' dtype, per kernel; other pointers are fp32, masks uint8.
LOW = {
    "_encode_partial_kernel": {"q_ptr", "k_ptr", "v_ptr"},
    "_encode_merge_kernel": {"z_lo_ptr"},
    "_decode_fwd_kernel": {"q_ptr", "z_ptr", "k_ptr", "y_ptr"},
    "_bwd_decode_kernel": {"q_ptr", "k_ptr", "y_ptr", "dy_ptr", "z_ptr", "dk_ptr"},
    "_bwd_latent_grad_kernel": {"dz_lo_ptr"},
    "_bwd_encode_kernel": {"q_ptr", "k_ptr", "v_ptr", "dz_ptr", "dkp_ptr", "dk_ptr", "dv_ptr"},
    "_dq_sum_kernel": {"dq_ptr"},
    "mlp_fwd_kernel": {"hid_ptr", "wt_ptr", "y_ptr", "pt_ptr"},
    "mlp_bwd_kernel": {"hid_ptr", "w_ptr", "wt_ptr"},
    "mlp_bwd_da_kernel": {"hid_ptr", "h0_ptr", "da_ptr", "w_ptr", "wt_ptr", "p_ptr", "dy_ptr"},
    "mlp_dw_kernel": {"da_ptr", "dout_ptr", "h0_ptr", "hid_ptr", "dx_ptr", "y_ptr", "x_ptr"},
}
FLOATS = {"qk_scale", "scale", "eps"}
TYPE = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


def _signature(kernel, low: str, constexprs: dict, pointers: frozenset[str] = frozenset()) -> tuple[dict, dict]:
    params = inspect.signature(kernel.fn).parameters
    names = list(params)
    # an argument with a default that is not given compiles as a launch that omits it (that constant),
    # but for the optional pointers named in ``pointers``, which the launch passes
    constexprs = {n: p.default for n, p in params.items()
                  if p.default is not inspect.Parameter.empty and n not in pointers} | constexprs
    sig = {}
    for name in names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = "*u8" if name == "mask_ptr" else f"*{low}" if name in LOW[kernel.fn.__name__] else "*fp32"
        else:
            sig[name] = "fp32" if name in FLOATS else "i32"
    return sig, {(names.index(k),): v for k, v in constexprs.items()}


def resources(kernel, dtype: torch.dtype, constexprs: dict, launch: dict,
              multiples_of_16: frozenset[str] = frozenset(), pointers: frozenset[str] = frozenset()) -> dict[str, int]:
    """Compile ``kernel`` for sm_90; returns cuobjdump's REG, STACK, SHARED, LOCAL.

    As a launch does, pointers are taken as 16-byte aligned (PyTorch's allocations are) and the
    integer arguments named in ``multiples_of_16`` as multiples of 16: without these hints the
    compiler cannot vectorise loads and the counts would not be those of the device."""
    sig, const = _signature(kernel, TYPE[dtype], constexprs, pointers)
    names = list(sig)
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n, t in sig.items()
             if t.startswith("*") or n in multiples_of_16}
    compiled = triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=const, attrs=attrs),
                              target=GPUTarget("cuda", 90, 32), options=launch)
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        report = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True,
                                check=True).stdout
    return {key: int(value) for key, value in re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", report)}


ROLE_KERNELS = {"encode": kf._encode_partial_kernel, "decode": kf._decode_fwd_kernel,
                "bwd_decode": kb._bwd_decode_kernel, "bwd_encode": kb._bwd_encode_kernel}


def _shape_constants(m: int, d: int, dtype: torch.dtype) -> dict:
    """The compile-time constants every mixer kernel shares at (m, d, dtype)."""
    align = min(d & -d, 16 // (torch.finfo(dtype).bits // 8))  # row alignment in elements, as _align finds
    return dict(M=m, D=d, ALIGN=align, PREC=input_precision(dtype))  # fp32: as the setting asks


def role_resources(m: int, d: int, dtype: torch.dtype, role: str, k: tm.KernelConfig) -> dict[str, int]:
    """Resources of one tiled kernel (``encode``, ``decode``, ``bwd_decode``, ``bwd_encode``) launched
    with ``k`` at (m, d, dtype)."""
    constexprs = _shape_constants(m, d, dtype) | dict(BLOCK_N=k.block_n, BLOCK_M=k.block_m, BLOCK_D=tm._pow2(d))
    if role in ("encode", "bwd_encode"):
        constexprs |= dict(HAS_KEYMASK=True, HAS_MASK=True)
    if role != "encode":
        constexprs["NUM_M_TILES"] = -(-m // k.block_m)
    if role == "bwd_decode":  # the tiles of one latent group
        constexprs |= dict(LATENT_ROWS=k.latent_rows, NUM_M_TILES=tm._latent_groups(m, k)[0])
    if role == "bwd_encode":
        constexprs["DK_PARTS"] = 1  # the decode side's shares of dk add one load each; one here
    return resources(ROLE_KERNELS[role], dtype, constexprs, k.launch_options())


def kernel_table(m: int, d: int, dtype: torch.dtype = torch.bfloat16) -> dict[str, dict[str, int]]:
    """Resources of all seven kernels at ``default_config(m, d, dtype)``."""
    cfg = tm.default_config(m, d, dtype)
    join = dict(M=m, D=d, **tm.join_tiles(tm._pow2(d)))  # the joins: fixed small tiles

    def joined(kernel) -> dict[str, int]:
        return resources(kernel, dtype, join, {"num_warps": 4, "num_stages": 2})

    def tiled(role: str) -> dict[str, int]:
        return role_resources(m, d, dtype, role, getattr(cfg, role))

    return {
        "_encode_partial_kernel": tiled("encode"),
        "_encode_merge_kernel": joined(kf._encode_merge_kernel),
        "_decode_fwd_kernel": tiled("decode"),
        "_bwd_decode_kernel": tiled("bwd_decode"),
        "_bwd_latent_grad_kernel": joined(kb._bwd_latent_grad_kernel),
        "_bwd_encode_kernel": tiled("bwd_encode"),
        "_dq_sum_kernel": joined(kb._dq_sum_kernel),
    }


def print_tune_table(m: int, d: int, dtype: torch.dtype) -> dict:
    """Resources of every candidate tile of ``benchmarks/mixer_tune.py`` for each tiled kernel at
    (m, d, dtype): a candidate that spills or does not compile is seen before a device sweep."""
    from benchmarks.mixer_tune import ROLES, candidates

    base = tm.default_config(m, d, dtype)
    table = {}
    print(f"sm_90, M={m} D={d} {str(dtype).removeprefix('torch.')}, mixer_tune.py's candidates (first: the default)")
    print(f"{'kernel':<12}{'candidate (block_n, block_m, warps, stages, programs/SM, register cap)':<72}"
          f"{'registers':>10}{'spill stack B':>14}")
    for role in ROLES:
        for k in dict.fromkeys([getattr(base, role), *candidates(m, role)]):
            try:
                r = role_resources(m, d, dtype, role, k)
            except Exception as err:  # out of registers or shared memory: the sweep would fail on it too
                r = {"error": type(err).__name__}
            table[(role, k)] = r
            shape = (k.block_n, k.block_m, k.num_warps, k.num_stages, k.programs_per_sm, k.maxnreg) + (
                ("latent rows",) if k.latent_rows else ()) + (
                (f"{k.latent_groups} latent groups",) if k.latent_groups > 1 else ())
            found = r.get("error") or f"{r.get('REG', 0):>10}{r.get('STACK', 0):>14}"
            print(f"{role:<12}{str(shape):<72}{found}")
    return table


ROWS = frozenset({"T"})  # the row count, 2^20 at scale: a multiple of 16, as the launch specialises it


def mlp_table(store_hidden: bool, cfg: triton_mlp.MLPConfig, c: int = 64, nl: int = 5,
              dtype: torch.dtype = torch.bfloat16, proj: bool = False, h0_from_x: bool = False,
              ) -> dict[str, dict[str, int]]:
    """Resources of the fused MLP's kernels as ``cfg`` launches them: the forward, then each
    backward segment (layers lo..hi-1), from kept inputs with ``store_hidden``; with ``proj`` as the
    folded output projection launches them (``triton_mlp_proj``: split backward only); with
    ``h0_from_x`` recomputing layer 0's input (``triton_mlp.RECOMPUTE_H0``: split backward only)."""
    common = dict(C=c, NL=nl, LN=True, ACT=km.GELU_TANH, DOT=dot_type(dtype), PREC=input_precision(dtype))
    pre = dict(PRE=True) if proj else {}
    given = frozenset({"y_ptr", "pt_ptr", "pb_ptr", "p_ptr", "dy_ptr", "dx_ptr"} if proj else ())  # the fold passes them
    table = {"forward": resources(km.mlp_fwd_kernel, dtype, common | pre | dict(
        RES=not proj, SAVE=store_hidden and nl > 1, BT=cfg.fwd_rows), cfg.launch("fwd"), ROWS, given)}
    if cfg.split:  # the row pass, then the weight-gradient GEMM
        table["backward row pass"] = resources(km.mlp_bwd_da_kernel, dtype, common | pre | dict(
            STORED=store_hidden, BT=cfg.split_rows, DA_LAST=False, STORE_H0=not h0_from_x, ACC_DX=False,
            ADD_DOUT=proj, H0_FROM_X=h0_from_x), triton_mlp.row_pass_launch(cfg, store_hidden, proj or h0_from_x),
            ROWS, given)
        gemm = pre | dict(C=c, NL=nl, PREC=common["PREC"], BT=cfg.dw_rows, DA_LAST=False, LN=True)
        table["backward weight GEMM"] = resources(km.mlp_dw_kernel, dtype, gemm, cfg.launch("dw"), ROWS, given)
        if h0_from_x:
            table["backward weight GEMM, layer 0 from x"] = resources(
                km.mlp_dw_kernel, dtype, gemm | dict(H0_FROM_X=True), cfg.launch("dw"), ROWS, given)
        return table
    if proj:
        raise ValueError("the folded projection runs the split backward only")
    rows, _, launch = cfg.backward(store_hidden)
    for lo, hi in cfg.segments(nl, store_hidden):
        table[f"backward {lo}-{hi - 1}"] = resources(
            km.mlp_bwd_kernel, dtype, common | dict(LO=lo, HI=hi, STORED=store_hidden, BT=rows), cfg.launch(launch), ROWS)
    return table


def print_mlp_tables() -> dict:
    """Resources of every configuration of ``benchmarks/mlp.py --sweep``."""
    from benchmarks.mlp import DEFAULTS, SWEEP, row_name

    tables = {}
    print("sm_90, fused MLP at C=64, 5 layers (3 hidden), bf16")
    print(f"{'configuration / kernel':<64}{'registers':>10}{'spill stack B':>14}{'local B':>9}")
    runs = [(store_hidden, cfg, False) for store_hidden, cfg in DEFAULTS + SWEEP]
    runs += [(store_hidden, cfg, True) for store_hidden, cfg in DEFAULTS if cfg.split]  # the folded projection
    runs += [(store_hidden, cfg, "h0") for store_hidden, cfg in DEFAULTS if cfg.split]  # LN(x) recomputed
    for store_hidden, cfg, variant in runs:
        name = row_name(store_hidden, cfg) + {False: "", True: " + out_proj folded", "h0": " + LN(x) recomputed"}[variant]
        tables[name] = mlp_table(store_hidden, cfg, proj=variant is True, h0_from_x=variant == "h0")
        print(name)
        for kernel, r in tables[name].items():
            print(f"  {kernel:<62}{r.get('REG', 0):>10}{r.get('STACK', 0):>14}{r.get('LOCAL', 0):>9}")
    return tables


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--m", type=int, default=256, help="latents M")
    parser.add_argument("--d", type=int, default=4, help="head dim D")
    parser.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    parser.add_argument("--mlp", action="store_true", help="the fused MLP's kernels, every sweep configuration")
    parser.add_argument("--tune", action="store_true", help="the tiled mixer kernels at every candidate of mixer_tune.py")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("kernel_resources.py compiles for the GPU: unset TRITON_INTERPRET")
    if args.mlp:
        return print_mlp_tables()
    if args.tune:
        return print_tune_table(args.m, args.d, getattr(torch, args.dtype))
    table = kernel_table(args.m, args.d, getattr(torch, args.dtype))
    print(f"sm_90, M={args.m} D={args.d} {args.dtype}, default_config tiles")
    print(f"{'kernel':<26}{'registers':>10}{'spill stack B':>14}{'local B':>9}{'shared B':>10}")
    for name, r in table.items():
        print(f"{name:<26}{r.get('REG', 0):>10}{r.get('STACK', 0):>14}{r.get('LOCAL', 0):>9}{r.get('SHARED', 0):>10}")
    return table


if __name__ == "__main__":
    main()
