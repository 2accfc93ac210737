"""Generated data remembers the options it was made with: a later run asking for other options
is refused by name instead of training on the old data (every generating datamodule)."""

from __future__ import annotations

import json

import pytest

from datamodules import DrivAerMLDataModule, ElasticityDataModule, LPBFDataModule
from datamodules.recipes import LEGACY_NOTE, RECIPES, check_recipe, keep_recipe, made_here


def test_recipes_round_trip_and_name_what_differs(tmp_path):
    keep_recipe(tmp_path, "a.mat", {"gen_seed": 1, "gen_permeability": (12.0, 3.0)})
    keep_recipe(tmp_path, "b/", {"gen_seed": 2})
    assert json.loads((tmp_path / RECIPES).read_text()) == {
        "a.mat": {"gen_seed": 1, "gen_permeability": [12.0, 3.0]}, "b/": {"gen_seed": 2}}
    check_recipe(tmp_path, "a.mat", {"gen_seed": 1, "gen_permeability": (12, 3)}, "X", "hint")  # tuples == lists
    check_recipe(tmp_path, "unrecorded.mat", {"gen_seed": 9}, "X", "hint")  # real data: no recipe, accepted
    with pytest.raises(ValueError, match=r"X: .*b/ was generated with gen_seed=2 .*asks for gen_seed=3: delete it.*, or hint"):
        check_recipe(tmp_path, "b/", {"gen_seed": 3}, "X", "hint")
    assert not list(tmp_path.glob(".*"))  # written through a temporary file, none left behind


def test_made_here_reads_the_recipes_and_the_older_note(tmp_path):
    """Run records say ``generated`` for folders this project made, also those made before the recipes."""
    assert not made_here(tmp_path)
    (tmp_path / RECIPES).write_text("{}\n")
    assert not made_here(tmp_path)  # nothing recorded in it
    keep_recipe(tmp_path, "a.mat", {"gen_seed": 1})
    assert made_here(tmp_path)
    older = tmp_path / "older"
    older.mkdir()
    (older / LEGACY_NOTE).write_text("train.mat: made locally by DarcyDataModule, not real data\n")
    assert made_here(older)


def test_a_damaged_recipe_file_is_named(tmp_path):
    (tmp_path / RECIPES).write_text("{not json")
    with pytest.raises(ValueError, match=rf"{RECIPES}: not valid JSON"):
        check_recipe(tmp_path, "a.mat", {"gen_seed": 1}, "X", "hint")


def test_drivaerml_proxy_refuses_runs_made_with_other_options_before_adding_any(tmp_path):
    kw = dict(root=str(tmp_path), proxy=True, proxy_train_runs=2, proxy_test_runs=1, proxy_panels=60,
              proxy_points=50, n_val=1)
    DrivAerMLDataModule(**kw).prepare_data()
    more = DrivAerMLDataModule(**(kw | {"proxy_train_runs": 3, "proxy_points": 80}))
    with pytest.raises(ValueError, match=r"DrivAerMLDataModule: .*train/ was generated with proxy_points=50.*"
                                         r"asks for proxy_points=80"):
        more.prepare_data()
    assert not (tmp_path / "train" / "run_3.npz").exists()  # no run of the new recipe beside the old ones
    DrivAerMLDataModule(**(kw | {"proxy_train_runs": 3})).prepare_data()  # same recipe: the missing run is added
    assert (tmp_path / "train" / "run_3.npz").exists()


def test_lpbf_proxy_refuses_a_folder_made_with_another_grid(tmp_path):
    kw = dict(root=str(tmp_path), generate=True, proxy_train=2, proxy_test=1, proxy_grid=(4, 4, 3), n_val=1)
    LPBFDataModule(**kw).prepare_data()
    with pytest.raises(ValueError, match=r"LPBFDataModule: .*train/ was generated with proxy_grid=\[4, 4, 3\]"):
        LPBFDataModule(**(kw | {"proxy_grid": (5, 4, 3)})).prepare_data()
    LPBFDataModule(**(kw | {"proxy_grid": (5, 4, 3), "generate": False})).prepare_data()  # reading only


def test_elasticity_refuses_cells_made_with_another_seed(tmp_path):
    pytest.importorskip("skfem")
    kw = dict(root=str(tmp_path), n_train=1, n_val=0, n_test=1, gen_samples=2, gen_seed=5)
    ElasticityDataModule(**kw).prepare_data()
    with pytest.raises(ValueError, match=r"ElasticityDataModule: .*Meshes/ was generated with gen_seed=5"):
        ElasticityDataModule(**(kw | {"gen_seed": 6})).prepare_data()
    ElasticityDataModule(**kw).prepare_data()
