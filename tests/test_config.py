from pathlib import Path

import pytest

from awares_rl.config import RecipeConfig, load_recipe
from awares_rl.core.config_io import ConfigError

RECIPES = sorted(Path(__file__).resolve().parents[1].joinpath("recipes").rglob("*.yaml"))


def test_there_are_recipes():
    assert any(p.name == "tiny_cpu.yaml" for p in RECIPES)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_recipe_loads_and_validates(path):
    assert isinstance(load_recipe(path), RecipeConfig)


def test_overrides_apply():
    cfg = load_recipe(RECIPES[0], ["rollout.group_size=4", "run.name=x", "rollout.temperature=0.7"])
    assert cfg.rollout.group_size == 4 and cfg.run.name == "x" and cfg.rollout.temperature == 0.7


@pytest.mark.parametrize("override,message", [
    ("rollout.groupsize=4", "rollout.groupsize: unknown key; valid keys of rollout"),
    ("rolout.group_size=4", "rolout: unknown key"),
    ("rollout.backend=tgi", "rollout.backend: 'tgi' is not allowed; choose one of ['vllm', 'hf']"),
    ("rollout.group_size=four", "rollout.group_size: expected an integer"),
    ("rollout.group_size=0", "rollout.group_size must be >= 1"),
    ("tiny.text_heads=8", "must be an integer >= 32"),
    ("rollout.prefix_caching=maybe", "expected true or false"),
    ("rollout", "must look like key.subkey=value"),
])
def test_invalid_values_name_key_and_fix(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        load_recipe(RECIPES[0], [override])


def test_missing_recipe(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_recipe(tmp_path / "nope.yaml")
