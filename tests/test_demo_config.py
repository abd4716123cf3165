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
    # a resolution ladder of one convnet: more input costs more time for a little more accuracy
    assert len({c.vision.image_size for c in grid if c.vision.kind == "timm"}) >= 4
    # distinct trials: the space must hold more architectures than the search asks for
    assert len({c.arch_key for c in grid}) > config.search.trials
    budgets = config.budget_list
    assert [b.metric for b in budgets] == ["latency_ms"] and budgets[0].op == "<="
    assert {o.metric for o in config.objectives} == {"accuracy", "latency_ms"}
    # the fastest ViT (1 layer, one 16 px patch) and the smallest convnets sit well inside the budget
    assert any(c.vision.kind == "vit" and c.vision.layers == 1 and c.vision.patch_size == 16 and
               c.vision.image_size == 16 for c in grid)
    assert min(c.vision.image_size for c in grid if c.vision.kind == "timm") <= 18
    # one thread: two onnxruntime threads time tiny towers unsteadily on a 2-core machine
    assert config.target == "local-cpu-1t"


def test_the_120_step_benchmark_experiment_is_the_demo_with_a_shorter_run_and_fewer_evaluation_images(repo_root):
    """The proxy benchmarks compare the demo's proxy with demo-120's: nothing else may differ."""
    demo = load_experiment(repo_root / "experiments" / "demo.yaml")
    short = load_experiment(repo_root / "experiments" / "benchmarks" / "demo-120.yaml")
    # the measured fidelity (proxy_fidelity.md) is for 20% of the 1200-step run and 4x the images
    assert demo.distill.steps == 2 * short.distill.steps == 240 and demo.full_distill.steps >= 5 * demo.distill.steps
    assert demo.distill.warmup_steps == 2 * short.distill.warmup_steps
    assert demo.eval.shapes.n_per_class == 4 * short.eval.shapes.n_per_class
    for part in ("teacher", "data", "space", "target", "objectives", "budgets", "search", "full_distill"):
        assert getattr(short, part) == getattr(demo, part), part
