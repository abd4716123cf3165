"""The demo experiment can show what the toolkit is for: a latency budget over two families."""
from __future__ import annotations

from collections import Counter

from dime_nas.config import load_experiment
from dime_nas.space import SearchSpace


def test_demo_space_and_budget_admit_two_image_tower_families(repo_root):
    config = load_experiment(repo_root / "experiments" / "demo.yaml")
    space = SearchSpace.load(config.space)
    grid = space.grid(embed_dim=256)
    families = Counter(c.vision.kind for c in grid)
    assert set(families) == {"vit", "timm"} and min(families.values()) >= 3, families
    assert len({c.vision.timm_model for c in grid if c.vision.kind == "timm"}) >= 2
    # distinct trials: the space must hold more architectures than the search asks for
    assert len({c.arch_key for c in grid}) > config.search.trials
    budgets = config.budget_list
    assert [b.metric for b in budgets] == ["latency_ms"] and budgets[0].op == "<="
    assert {o.metric for o in config.objectives} == {"accuracy", "latency_ms"}
    # the fastest ViTs and the smallest convnets sit well inside the budget: neither family is cut out
    assert any(c.vision.kind == "vit" and c.vision.layers == 1 and c.vision.patch_size == 16 and
               c.vision.image_size == 32 for c in grid)
    assert any(c.vision.kind == "timm" and c.vision.image_size == 32 for c in grid)
