"""The package's layers hold (docs/architecture.md): each part of ``flare_lightning`` (and the
``datamodules`` package) imports only parts of lower layers, and the lower layers are plain
torch (no Lightning). Read from the source, imports inside functions included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import REPO

# Lowest first; a part may import the parts of lower layers only (docs/architecture.md).
LAYERS = (
    {"atomic", "compat"},  # foundation: crash-safe writes, Lightning's private APIs
    {"kernels"},
    {"models"},
    {"io", "analysis", "forces"},
    {"parallel", "training"},
    {"datamodules", "runs"},
    {"callbacks", "export"},
    {"cli"},
    {"__main__"},
)
LAYER = {part: i for i, parts in enumerate(LAYERS) for part in parts}
NO_LIGHTNING = {"atomic", "kernels", "models", "io", "analysis", "forces"}  # usable without Lightning installed


def part_of(module: str) -> str:
    """``flare_lightning.runs.folder`` -> ``runs``; ``flare_lightning.cli`` -> ``cli``; ``datamodules.x`` -> ``datamodules``."""
    names = module.split(".")
    if names[0] == "datamodules":
        return "datamodules"
    return names[1] if len(names) > 1 else "__init__"


def imports(path: Path) -> set[str]:
    """Every absolute import of a file, as module names (``from flare_lightning import x``: ``flare_lightning.x``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            if node.module == "flare_lightning":
                found.update(f"flare_lightning.{a.name}" for a in node.names)
    return found


def violations(root: Path) -> list[str]:
    """One line per import that breaks the layers under ``root`` (a tree holding ``flare_lightning/``
    and ``datamodules/``), and per module of a part no layer holds."""
    problems = []
    files = sorted([*root.glob("flare_lightning/**/*.py"), *root.glob("datamodules/**/*.py")])
    for path in files:
        rel = path.relative_to(root)
        module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        part = part_of(module)
        if part == "__init__":
            continue
        if part not in LAYER:
            problems.append(f"{rel}: part {part!r} is in no layer of tests/test_layout.py (place it, and say where in "
                            "docs/architecture.md)")
            continue
        for name in sorted(imports(path)):
            top = name.split(".")[0]
            if top == "pytorch_lightning":
                problems.append(f"{rel}: imports pytorch_lightning (use `import lightning as L`)")
            elif top == "lightning" and part in NO_LIGHTNING:
                problems.append(f"{rel}: imports {name}, but part {part} is plain torch")
            elif top in ("flare_lightning", "datamodules") and name != "flare_lightning":
                other = part_of(name)
                if other != part and LAYER.get(other, len(LAYERS)) >= LAYER[part]:
                    problems.append(f"{rel}: imports {name} (part {other}, layer {LAYER.get(other)}) from part "
                                    f"{part} (layer {LAYER[part]}): only lower layers")
    return problems


def test_every_import_goes_down_the_layers():
    assert violations(REPO) == []


def test_every_part_of_the_package_has_a_layer():
    parts = {p.stem if p.is_file() else p.name for p in (REPO / "flare_lightning").iterdir()
             if (p.suffix == ".py" or (p / "__init__.py").is_file()) and p.name != "__init__.py"}
    assert parts <= set(LAYER), sorted(parts - set(LAYER))


@pytest.mark.parametrize("source, expected", [
    ("from flare_lightning.training.module import SurrogateModule", "only lower layers"),
    ("import lightning as L", "part models is plain torch"),
    ("import pytorch_lightning", "use `import lightning as L`"),
    ("from flare_lightning import cli", "only lower layers"),
    ("from flare_lightning.kernels import flare_mix\nfrom flare_lightning.models.mlp import ResidualMLP", None),
])
def test_the_check_finds_imports_that_go_up(tmp_path, source, expected):
    """The check itself, on a tree whose one model file imports ``source``."""
    (tmp_path / "flare_lightning" / "models").mkdir(parents=True)
    (tmp_path / "flare_lightning" / "models" / "net.py").write_text(f"def build():\n    {source.replace(chr(10), chr(10) + '    ')}\n")
    found = violations(tmp_path)
    if expected is None:
        assert found == []
    else:
        assert len(found) == 1 and expected in found[0] and "flare_lightning/models/net.py" in found[0]


def test_a_part_in_no_layer_is_named(tmp_path):
    (tmp_path / "flare_lightning" / "extras").mkdir(parents=True)
    (tmp_path / "flare_lightning" / "extras" / "thing.py").write_text("import torch\n")
    assert violations(tmp_path) == [
        "flare_lightning/extras/thing.py: part 'extras' is in no layer of tests/test_layout.py (place it, and say "
        "where in docs/architecture.md)"
    ]
