"""Batches without padding reach the network with no mask: the collate's ``padded`` flag,
the module's ``network_mask`` on every forward path, and the fast step's graph keys."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch_geometric.data import Data

from datamodules.collate import PaddedCollate, bucket_size
from flare_lightning.training.fast_step import FastTrainStep, GraphedForward, batch_key
from flare_lightning.models import Transformer
from flare_lightning.training.module import SurrogateModule

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def sample(n: int, i: int = 0) -> Data:
    return Data(pos=torch.rand(n, 2), y=torch.randn(n, 1), sample_id=torch.tensor([i]))


@pytest.mark.parametrize("sizes, buckets, padded", [
    ((30, 30), False, False),  # same size: no padding
    ((30, 21), False, True),  # the shorter sample is padded
    ((30, 30), True, True),  # 30 -> bucket 32: both padded
    ((32, 32), True, False),  # already a bucket size
])
def test_collate_flags_padding(sizes, buckets, padded):
    batch = PaddedCollate(pad_to_buckets=buckets)([sample(n, i) for i, n in enumerate(sizes)])
    assert batch["padded"] is padded
    assert bool((~batch["mask"]).any()) is padded  # the flag says exactly what the mask says
    if buckets:
        assert batch["x"].shape[1] == bucket_size(max(sizes))


def test_collate_refuses_samples_without_targets():
    no_target = Data(pos=torch.rand(5, 2), sample_id=torch.tensor([7]))
    with pytest.raises(ValueError, match=r"samples \[7\] carry no targets"):
        PaddedCollate()([sample(5, 0), no_target])


class MaskSpy(nn.Module):
    """A per-point linear map that records the mask it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 1)
        self.seen: list[Tensor | None] = []

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        self.seen.append(mask)
        return self.lin(x)


def fitted_module(model: nn.Module, **kw) -> SurrogateModule:
    module = SurrogateModule(model, in_dim=2, out_dim=1, **kw)
    module.input_norm.set_stats(torch.zeros(2), torch.ones(2))
    module.target_norm.set_stats(torch.zeros(1), torch.ones(1))
    return module


@pytest.mark.parametrize("padded", [False, True, None])
def test_module_drops_the_mask_only_of_unpadded_batches(padded):
    spy = MaskSpy()
    module = fitted_module(spy)
    batch = PaddedCollate()([sample(12, 0), sample(12, 1)])
    if padded is None:
        del batch["padded"]  # batches from elsewhere (no flag) keep their mask
    else:
        batch["padded"] = padded
    losses, _ = module._sample_losses(batch)
    pred = module._predict(batch)
    expect_none = padded is False
    assert len(spy.seen) == 2 and all((m is None) == expect_none for m in spy.seen)
    # the loss and metrics still use the batch's mask
    assert losses.shape == (2,) and torch.isfinite(losses).all() and pred.shape == (2, 12, 1)


def test_unpadded_batches_give_the_same_losses_and_gradients():
    """Through a real attention model: dropping an all-True mask changes nothing (float64)."""
    torch.manual_seed(0)
    model = Transformer(in_dim=2, out_dim=1, channels=16, num_blocks=2, num_heads=4).double()
    module = fitted_module(model).double()
    batch = PaddedCollate()([sample(20, 0), sample(20, 1)])
    batch = {k: v.double() if isinstance(v, Tensor) and v.is_floating_point() else v for k, v in batch.items()}
    grads = []
    for padded in (True, False):
        model.zero_grad()
        losses, _ = module._sample_losses(batch | {"padded": padded})
        losses.sum().backward()
        grads.append((losses.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-12, atol=1e-12)
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_graph_keys_tell_padded_from_unpadded_batches():
    batch = PaddedCollate()([sample(12, 0), sample(12, 1)])
    assert batch_key(batch) != batch_key(batch | {"padded": True})
    assert batch_key({"x": batch["x"], "mask": None}, ("x", "mask")) != batch_key(batch, ("x", "mask"))


def test_eager_fast_step_passes_the_flag_to_the_loss():
    """Off CUDA the fast step runs eagerly on the batch it is given, flag included."""
    spy = MaskSpy()
    module = fitted_module(spy)
    optimizer = torch.optim.AdamW(spy.parameters(), lr=1e-3)
    step = FastTrainStep(module._sample_losses, optimizer, clip_val=1.0)
    assert not step.capture
    batch = PaddedCollate()([sample(12, 0), sample(12, 1)])
    step(batch)
    step(batch | {"padded": True})
    assert spy.seen[0] is None and spy.seen[1] is not None


@pytest.mark.gpu
@cuda
def test_graphs_of_unpadded_batches_replay_without_a_mask():
    """On a GPU: the evaluation graph of a mask-free batch replays new inputs, and the
    training step captures one graph per flag (same shapes) with the matching mask use."""
    lin = nn.Linear(4, 3).cuda()
    fwd = GraphedForward(lambda x, m: lin(x) if m is None else lin(x) * m[..., None])
    for _ in range(4):  # eager, capture, replay, replay
        x = torch.randn(2, 5, 4, device="cuda")
        torch.testing.assert_close(fwd(x, None), lin(x))
    m = torch.rand(2, 5, device="cuda") > 0.5
    for _ in range(3):
        x = torch.randn(2, 5, 4, device="cuda")
        torch.testing.assert_close(fwd(x, m), lin(x) * m[..., None])
    assert len(fwd._captured) == 2

    spy = MaskSpy().cuda()
    module = fitted_module(spy).cuda()
    optimizer = torch.optim.AdamW(spy.parameters(), lr=1e-3, capturable=True)
    step = FastTrainStep(module._sample_losses, optimizer, clip_val=1.0, warmup_steps=1)
    batch = {k: v.cuda() if isinstance(v, Tensor) else v for k, v in PaddedCollate()([sample(12, 0), sample(12, 1)]).items()}
    for flag in (False, True):
        for _ in range(3):  # warm-up, capture, replay
            step(batch | {"padded": flag})
    assert len(step._captured) == 2 and all(entry.graphs for entry in step._captured.values())
    assert {tuple(k[-1]) for k in step._captured} == {("padded", False), ("padded", True)}


def test_a_fit_on_grid_data_hands_the_network_no_mask(tiny_darcy_root):
    """End to end through a DataModule and Lightning's batch transfer: every Darcy batch (no
    padding) reaches the network without a mask, in training and validation alike."""
    import lightning as L

    from datamodules.darcy import DarcyDataModule

    class GridSpy(MaskSpy):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 1)

    dm = DarcyDataModule(root=str(tiny_darcy_root), train_file="train.mat", test_file="test.mat", n_train=8,
                         n_val=4, n_test=4, stride=1, batch_size=3, generate=False)
    spy = GridSpy()
    module = SurrogateModule(spy, in_dim=3, out_dim=1, lr=1e-3)
    trainer = L.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", devices=1, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 3 and len(spy.seen) >= 3 + 2  # three training steps, two validation batches
    assert all(m is None for m in spy.seen)
