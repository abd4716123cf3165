"""Extending the search in one place each, as docs/extending.md says: a metric (one `Metric`
entry, plus the line that computes it), a latency backend (one class in the registry) and a
sampler (one entry in `SAMPLERS`), used together by a tiny search."""
from __future__ import annotations

import csv

import optuna

from conftest import write_experiment
from dime_nas import api, evaluate, metrics
from dime_nas.config import load_experiment
from dime_nas.cost import latency
from dime_nas.cost.backend import LatencyBackend, LatencyMeasurement
from dime_nas.search import samplers

BOARD = """
made-up-board:
  description: a board whose latency is one ms per million parameters, plus an overhead
  backend: per-param
  options: {overhead_ms: 0.5}
"""


class PerParamBackend(LatencyBackend):
    """A made-up device: 1 ms per million parameters of the tower, plus the target's overhead option."""

    name = "per-param"
    needs_onnx = False

    @classmethod
    def parse_options(cls, options):
        return float(dict(options or {}).get("overhead_ms", 0.0))

    def measure(self, tower, target):
        ms = sum(p.numel() for p in tower.module.parameters()) / 1e6 + target.options
        return LatencyMeasurement(tower=tower.name, target=target.name, backend=self.name, median_ms=ms, p10_ms=ms,
                                  p90_ms=ms, p99_ms=ms, mean_ms=ms, std_ms=0.0, cv=0.0, runs=target.runs,
                                  warmup=target.warmup, batch=target.batch_size, threads=target.intra_op_threads,
                                  providers=["made-up"], precision=target.precision, session_medians_ms=[ms])


def test_a_metric_a_backend_and_a_sampler_added_in_one_place_each_drive_a_search(tmp_path, tiny_teacher_dir,
                                                                                 monkeypatch):
    # the metric: its record, and where it is computed (a line in evaluate.py)
    monkeypatch.setitem(metrics.METRICS, "retrieval_r5", metrics.Metric(
        "retrieval_r5", "maximize", "quality", "R@5", "mean of image->text and text->image R@5 (0..1)",
        bounded=True, produced_by=metrics.with_retrieval))
    real_evaluate = evaluate.evaluate_towers

    def with_r5(*args, **kwargs):
        out = real_evaluate(*args, **kwargs)
        out["retrieval_r5"] = (out["retrieval/i2t_r5"] + out["retrieval/t2i_r5"]) / 2
        return out

    monkeypatch.setattr(evaluate, "evaluate_towers", with_r5)
    # the backend: one class in the registry
    monkeypatch.setitem(latency.LATENCY_BACKENDS, PerParamBackend.name, PerParamBackend)
    # the sampler: one entry
    built = []

    def brute_force(search, seed, n_objectives):  # told how many objectives the study has
        built.append(n_objectives)
        return optuna.samplers.BruteForceSampler(seed=seed)

    monkeypatch.setitem(samplers.SAMPLERS, "brute-force", samplers.Sampler(brute_force))

    path = write_experiment(tmp_path, tiny_teacher_dir, trials=3, budgets=["retrieval_r5 >= 0", "latency_ms <= 50"],
                            extra="objectives: [{metric: retrieval_r5}, {metric: latency_ms}]\n")
    path.write_text(path.read_text().replace("sampler: random", "sampler: brute-force")
                    .replace("target: fast-cpu", "target: made-up-board"))
    (tmp_path / "targets.yaml").write_text((tmp_path / "targets.yaml").read_text() + BOARD)
    outcome = api.search(load_experiment(path), out=tmp_path / "run", progress=False)

    assert built and set(built) == {2} and isinstance(outcome.study.sampler, optuna.samplers.BruteForceSampler)
    done = [t for t in outcome.study.get_trials() if t.user_attrs.get("status") == "ok"]
    assert len({t.user_attrs["arch_key"] for t in done}) == 3, [t.user_attrs.get("reason") for t in
                                                                 outcome.study.get_trials()]
    for t in done:
        cost, values = t.user_attrs["cost"], t.user_attrs["metrics"]
        assert cost["per_tower"]["image"]["providers"] == ["made-up"]
        assert abs(cost["latency_ms"] - (cost["params_m"] + 0.5)) < 1e-9  # the backend's number decided
        assert 0 <= values["retrieval_r5"] <= 1 and t.values == [values["retrieval_r5"], cost["latency_ms"]]
    rows = list(csv.DictReader(outcome.run.trials_csv.open()))
    assert all(row["retrieval_r5"] != "" for row in rows if row["status"] == "ok")
    assert "retrieval_r5" in outcome.run.report_md.read_text()
