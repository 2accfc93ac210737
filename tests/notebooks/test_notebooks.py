"""The analysis notebooks: committed as the generator writes them (no outputs), and each
runs top to bottom against a checkpoint of the quickstart config."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

nbformat = pytest.importorskip("nbformat")  # dev extras; a GPU machine may lack them
NotebookClient = pytest.importorskip("nbclient").NotebookClient

from tests.helpers import REPO
from tests.quickstart_run import quickstart_run  # noqa: F401  (session fixture)

NOTEBOOKS = REPO / "notebooks"
KERNEL = "flare-lightning-test"


def generator():
    spec = importlib.util.spec_from_file_location("build_notebooks", NOTEBOOKS / "build_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


NAMES = sorted(generator().NOTEBOOKS)


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory) -> str:
    """A kernelspec running this interpreter, so the notebooks see the same environment
    whether or not a ``python3`` kernel is installed."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": KERNEL, "language": "python"}))
    return str(root)


def test_committed_notebooks_match_the_generator():
    built = generator().build()
    assert sorted(built) == NAMES == sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    for name, nb in built.items():
        committed = nbformat.read(NOTEBOOKS / name, as_version=4)
        assert committed == nb, f"{name} is stale: run python notebooks/build_notebooks.py"
        assert all(not c.get("outputs") for c in committed.cells if c.cell_type == "code")
        assert "parameters" in committed.cells[1].metadata.get("tags", [])


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(name, quickstart_run, kernel_dir, monkeypatch):
    monkeypatch.setenv("JUPYTER_PATH", kernel_dir)
    monkeypatch.setenv("FLARE_RUN_DIR", str(quickstart_run))
    monkeypatch.setenv("FLARE_RUN_DIRS", str(quickstart_run))
    monkeypatch.setenv("MPLBACKEND", "agg")
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(nb, kernel_name=KERNEL, timeout=240, resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2, f"{name} drew {len(images)} figures"
    printed = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert str(quickstart_run) in printed  # the injected run was used, not the default
    if name == "spectral_analysis.ipynb":  # the attention-logit table covers both passes of every block
        assert "flare 0 encode" in printed and "flare 1 decode" in printed
    if name == "training_curves.ipynb":  # the per-layer logit curves of the fixture's AttentionLogits
        assert "largest |logit| at the last record" in printed and "flare_2_decode" in printed
