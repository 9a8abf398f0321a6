"""Every training recipe shipped in recipes/ parses and names an environment that exists, so a
user's first `reasonrl train recipes/X.yaml` fails on nothing but a missing checkpoint."""

from pathlib import Path

import pytest
import yaml

from reasonrl.envs.registry import load_environment
from reasonrl.rl.config import load_config

RECIPES = sorted(p for p in (Path(__file__).parents[2] / "recipes").glob("*.yaml")
                 if "train" in (yaml.safe_load(p.read_text()) or {}))


def test_there_are_training_recipes():
    assert {"shapes-vqa.yaml", "shapes-vqa-gpu.yaml", "sums-gpu.yaml"} <= {p.name for p in RECIPES}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_parses_and_its_environment_loads(path):
    cfg = load_config(path)
    assert cfg.train.steps > 0
    assert load_environment(cfg.env.name).name
