"""How the Triton kernels' dots take their operands, one rule for the mixer and the fused MLPs.

fp32 operands follow ``torch.get_float32_matmul_precision()`` as PyTorch's own matmuls do
(``highest``: exact fp32 products; ``high``/``medium``: TF32 tensor cores, as the FLARE authors'
trainer runs); 16-bit operands ignore it (on sm_90 both settings compile to the same code).
"""

from __future__ import annotations

import torch


def input_precision(dtype: torch.dtype) -> str:
    """``tl.dot``'s ``input_precision`` for operands of ``dtype``: ``ieee`` or ``tf32``."""
    if dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        return "ieee"
    return "tf32"


def dot_type(dtype: torch.dtype):
    """The ``tl`` dtype of dot operands of ``dtype`` (bf16, fp16 or fp32); needs Triton."""
    import triton.language as tl

    return {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16, torch.float32: tl.float32}[dtype]
