"""Training batches cross to the GPU on a side stream: the same values, usable at once on the
compute stream even while it is busy, and CPU runs untouched."""

from __future__ import annotations

import pytest
import torch

from flare_lightning.training.batch_transfer import SideStreamTransfer


def test_cpu_batches_take_the_plain_move():
    batch = {"x": torch.zeros(2), "rest": [torch.ones(3), (torch.arange(4), "name")], "padded": False}
    calls = []
    out = SideStreamTransfer()(lambda x: calls.append(x) or "moved", batch, torch.device("cpu"))
    assert out == "moved" and calls == [batch]  # no stream on the CPU: the plain move


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_side_stream_copy_is_ready_for_a_busy_compute_stream():
    """A pinned batch moved while the compute stream still runs a long matmul chain: what the
    compute stream then reads is the batch (it waited for the copy), never stale memory."""
    device = torch.device("cuda", torch.cuda.current_device())
    transfer = SideStreamTransfer()
    w = torch.randn(2048, 2048, device=device)
    for trial in range(3):
        host = {"x": torch.randn(1 << 20, 3).pin_memory(), "y": torch.randn(1 << 20, 1).pin_memory(), "padded": False}
        busy = w
        for _ in range(20):  # keep the compute stream busy past the copy's issue
            busy = busy @ w / 2048
        moved = transfer(lambda b: {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in b.items()},
                         host, device)
        total = moved["x"].sum(0).double() + moved["y"].sum().double()  # on the compute stream
        expected = host["x"].sum(0).double() + host["y"].sum().double()
        torch.testing.assert_close(total.cpu(), expected, rtol=1e-4, atol=1e-2)
        assert moved["padded"] is False and moved["x"].device == device
    torch.cuda.synchronize()
