"""What this project generated in a data folder and with which options, kept beside it
(``<root>/GENERATED.json``): run records say the data was made, not read, and data made with
other options is refused by name instead of silently read as if it were new."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flare_lightning.atomic import atomic_write_text

RECIPES = "GENERATED.json"
LEGACY_NOTE = "GENERATED.txt"  # the plain-text note of folders generated before the recipes were kept
OTHER_ROOT = "point data.root elsewhere for this variant"


def _normal(recipe: dict[str, Any]) -> dict[str, Any]:
    """The recipe as JSON reads it back (tuples become lists)."""
    return json.loads(json.dumps(recipe))


def _read(root: Path) -> dict[str, dict[str, Any]]:
    path = root / RECIPES
    if not path.is_file():
        return {}
    try:
        recipes = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err}); delete it, or the generated data with it") from err
    if not isinstance(recipes, dict):
        raise ValueError(f"{path}: expected an object of generated targets, got {type(recipes).__name__}")
    return recipes


def keep_recipe(root: str | Path, target: str, recipe: dict[str, Any]) -> None:
    """Record that ``target`` (a file or folder under ``root``) was generated with ``recipe``."""
    root = Path(root)
    recipes = _read(root)
    recipes[target] = _normal(recipe)
    atomic_write_text(root / RECIPES, json.dumps(recipes, indent=1, sort_keys=True) + "\n")


def made_here(root: str | Path) -> bool:
    """Whether this project generated anything in ``root`` (a recipe is kept, or the older note)."""
    root = Path(root)
    return bool(_read(root)) or (root / LEGACY_NOTE).is_file()


def check_recipe(root: str | Path, target: str, recipe: dict[str, Any], owner: str, hint: str = OTHER_ROOT) -> None:
    """Refuse ``target`` if it was generated with options other than ``recipe`` (the options'
    names as the config spells them). Data without a recorded recipe (real data, or made before
    recipes were kept) is accepted as it is."""
    root = Path(root)
    made = _read(root).get(target)
    if made is None:
        return
    wanted = _normal(recipe)
    differ = sorted(k for k in wanted if k in made and made[k] != wanted[k])
    if differ:
        was = ", ".join(f"{k}={made[k]}" for k in differ)
        now = ", ".join(f"{k}={wanted[k]}" for k in differ)
        raise ValueError(
            f"{owner}: {root / target}{'/' if target.endswith('/') else ''} was generated with {was} ({root / RECIPES}), but this run asks for {now}: "
            f"delete it to generate it again with these options, or {hint}"
        )
