"""The datamodules' shared arguments: declared once in ``MeshDataModule``, keyword-only (a
reordered base class cannot bind a value to the wrong name), forwarded by name, listed by
LightningCLI under ``--data.init_args.*``; and the stage-to-split rule, applied once."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import lightning as L
import pytest
from lightning.pytorch.cli import LightningArgumentParser

from datamodules import DarcyDataModule, DrivAerMLDataModule, ElasticityDataModule, LPBFDataModule
from datamodules.mesh_datamodule import MeshDataModule
from tests.datamodules.tiny_data import KINDS, tiny

CLASSES = [DarcyDataModule, ElasticityDataModule, DrivAerMLDataModule, LPBFDataModule]
BASE = [p for p in inspect.signature(MeshDataModule.__init__).parameters.values() if p.name != "self"]
# A value for each base argument, none of them a default, so a value bound to another name shows.
VALUES = {"batch_size": 3, "eval_batch_size": 5, "num_workers": 2, "prefetch_factor": 7, "persistent_workers": True,
          "pin_memory": False, "train_points": 11, "seed": 13, "pad_to_buckets": True, "predict_files": "new/*.vtp"}


def test_base_arguments_are_keyword_only():
    assert [p.name for p in BASE] == ["root", *VALUES]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in BASE)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_subclasses_redeclare_no_base_argument_but_to_change_its_default(cls):
    own = inspect.signature(cls.__init__).parameters
    assert own["kwargs"].kind is inspect.Parameter.VAR_KEYWORD
    for p in BASE:
        if p.name in own:
            assert p.name == "root" or own[p.name].default != p.default, f"{cls.__name__} re-declares {p.name}"


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_each_base_argument_reaches_its_attribute(tmp_path, cls):
    dm = cls(root=str(tmp_path), **VALUES)
    assert dm.root == tmp_path
    for name, value in VALUES.items():
        assert getattr(dm, name) == value, name
    assert dm.subsample.num_points == 11 and dm.subsample.seed == 13


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_cli_lists_the_base_arguments_under_data_init_args(tmp_path, cls):
    parser = LightningArgumentParser(exit_on_error=False)
    parser.add_lightning_class_args(L.LightningDataModule, "data", subclass_mode=True)
    args = [f"--data={cls.__module__}.{cls.__name__}", f"--data.init_args.root={tmp_path}"]
    args += [f"--data.init_args.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in VALUES.items()]
    dm = parser.instantiate_classes(parser.parse_args(args)).data
    assert type(dm) is cls
    assert {k: getattr(dm, k) for k in VALUES} == VALUES


def test_loader_options_reach_the_loaders_and_need_workers(tmp_path):
    data = tiny("darcy", tmp_path)
    options = {"prefetch_factor": 3, "persistent_workers": True, "pin_memory": False}
    dm = data.datamodule(num_workers=1, **options)
    dm.setup("fit")
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        assert (loader.prefetch_factor, loader.persistent_workers, loader.pin_memory) == (3, True, False)
    dm = data.datamodule(num_workers=0, **options)  # no workers: the worker options do not apply
    dm.setup("fit")
    assert dm.train_dataloader().num_workers == 0 and not dm.train_dataloader().persistent_workers
    with pytest.raises(ValueError, match=r"DarcyDataModule: prefetch_factor must be >= 1 or None, got 0"):
        data.datamodule(num_workers=1, prefetch_factor=0)


@pytest.mark.parametrize("kind", KINDS)
def test_each_stage_builds_its_splits(tmp_path, kind):
    data = tiny(kind, tmp_path)
    expect = {"fit": ["test", "train", "val"], "validate": ["val"], "test": ["test"], "predict": ["test"]}
    for stage, splits in expect.items():
        dm = data.datamodule(train_points=4)
        dm.setup(stage)
        assert sorted(dm.datasets) == splits, stage
        assert ("train" in splits) == (dm.input_stats is not None)
        if "train" in splits:
            assert dm.datasets["train"].transform is dm.subsample and dm.datasets["val"].transform is None
    dm = data.datamodule(n_val=0)
    dm.setup("fit")
    assert sorted(dm.datasets) == ["test", "train"]


def test_the_data_layer_computes_no_forces():
    """Cd/Cl are evaluated in flare_lightning (force_metrics); datamodules only give the geometry."""
    for path in sorted(Path(__file__).resolve().parents[2].joinpath("datamodules").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                assert not any(n.startswith(("torchmetrics", "flare_lightning.force")) for n in names), path.name
