"""The Pareto reporter: a study's trials -> front, hypervolume, knee, selection, files.

Files written into the run directory: ``trials.csv``, ``pareto.csv``, ``selected.json``,
``report.md``, ``pareto_latency.png``, ``pareto_macs.png`` and ``report.html``.
Only feasible trials (status ``ok``; each architecture once) enter the front.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from ..metrics import METRICS, Budget, headline_quality, quality_metrics
from ..run_dir import RunDir
from .record import TrialRecord, trial_status
from .pareto import (default_reference, experiment_reference, hypervolume, knee_point, non_dominated,
                     top_k_along_front)



class SelectionReason(str, Enum):
    """Why a student was selected for a full distillation (``selected.json``'s ``reasons``)."""

    BEST = "best"  # the best quality metric within all budgets
    BUDGET = "budget"  # the best quality under one budget (the experiment's or a --budget)
    KNEE = "knee"  # the knee of the front
    TOP = "top"  # one of the top-K spread along the front (``top_rank`` orders them)


@dataclass
class Row:
    """One trial, flattened."""

    number: int
    state: str
    status: str
    reason: str
    record: TrialRecord
    values: list[float] | None

    @property
    def metrics(self) -> dict[str, Any]:
        return self.record.metrics

    def get(self, metric: str) -> float | None:
        v = self.metrics.get(metric)
        return None if v is None else float(v)


def collect(study: optuna.Study) -> list[Row]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        record = TrialRecord.from_trial(t)
        rows.append(Row(t.number, t.state.name, trial_status(t), record.reason or "", record,
                        list(t.values) if t.values else None))
    return rows


def front(rows: list[Row], objectives: list[str], directions: list[str]) -> tuple[list[Row], np.ndarray, list[Row]]:
    """Feasible unique rows, their objective matrix, and the non-dominated subset."""
    seen, feasible = set(), []
    for r in rows:
        key = r.record.arch_key
        if r.state == "COMPLETE" and r.status == "ok" and key not in seen and all(
                r.get(m) is not None for m in objectives):
            seen.add(key)
            feasible.append(r)
    points = np.array([[r.get(m) for m in objectives] for r in feasible], dtype=float).reshape(-1, len(objectives))
    nd = non_dominated(points, directions) if len(feasible) else np.array([], dtype=int)
    return feasible, points, [feasible[i] for i in nd]


def select(feasible: list[Row], points: np.ndarray, objectives: list[str], directions: list[str],
           budgets: list[Budget], extra_budgets: list[Budget], quality: str, top_k: int) -> list[dict[str, Any]]:
    """The students worth a full distillation, each with the reason it was picked."""
    picks: list[dict[str, Any]] = []

    def add(row: Row, reason: SelectionReason, why: str, top_rank: int | None = None) -> None:
        pick = next((p for p in picks if p["trial"] == row.number), None)
        if pick is None:
            pick = {"trial": row.number, "arch_key": row.record.arch_key, "why": [], "reasons": [],
                    "describe": row.record.describe, "config": row.record.config,
                    "metrics": {m: row.get(m) for m in METRICS if row.get(m) is not None}}
            picks.append(pick)
        pick["why"].append(why)
        if reason.value not in pick["reasons"]:
            pick["reasons"].append(reason.value)
        if top_rank is not None:
            pick["top_rank"] = top_rank

    if not feasible:
        return picks
    sign = 1 if METRICS[quality].direction == "maximize" else -1

    def score(r: Row) -> float:
        v = r.get(quality)
        return -np.inf if v is None else sign * v

    add(max(feasible, key=score), SelectionReason.BEST, f"best {quality} within all budgets")
    for b in [*budgets, *extra_budgets]:
        ok = [r for r in feasible if r.get(b.metric) is not None and b.violation(r.get(b.metric)) <= 0]
        if ok:
            add(max(ok, key=score), SelectionReason.BUDGET, f"best {quality} with {b}")
    if len(objectives) > 1:
        nd = non_dominated(points, directions)
        add(feasible[nd[knee_point(points[nd], directions)]], SelectionReason.KNEE, "knee of the front")
        for rank, i in enumerate(top_k_along_front(points, directions, top_k)):
            add(feasible[i], SelectionReason.TOP, f"top-{top_k} along the front (#{rank + 1})", top_rank=rank + 1)
    return picks


def write_report(study: optuna.Study, out: RunDir | str | Path, *, extra_budgets: list[Budget] | None = None,
                 top_k: int = 3, title: str | None = None) -> dict[str, Any]:
    """Write every report file into the run folder ``out``; returns the summary (also in selected.json)."""
    run = out if isinstance(out, RunDir) else RunDir(out)
    run.path.mkdir(parents=True, exist_ok=True)
    objectives = study.user_attrs.get("objectives") or ["value"]
    directions = [d.name.lower() for d in study.directions]
    budgets = [Budget.parse(b) for b in study.user_attrs.get("budgets", [])]
    rows = collect(study)
    feasible, points, nd_rows = front(rows, objectives, directions)
    quality = headline_quality(objectives)
    summary: dict[str, Any] = {"study": study.study_name, "objectives": objectives, "directions": directions,
                               "budgets": [str(b) for b in budgets], "target": study.user_attrs.get("target"),
                               "counts": _counts(rows), "front": [r.number for r in nd_rows]}
    if len(feasible):
        ref, rule = experiment_reference(objectives, directions, budgets, study.user_attrs.get("hv_reference"))
        if ref is None:  # only comparable within this run
            ref = default_reference(points, directions).tolist()
            rule = f"nadir of the feasible trials pushed out by 10% of each range ({rule}; not comparable across runs)"
        nd_points = np.array([[r.get(m) for m in objectives] for r in nd_rows])
        summary["hypervolume"] = {"value": hypervolume(nd_points, directions, ref), "reference": list(ref),
                                  "reference_rule": rule}
        if len(objectives) > 1:
            nd = non_dominated(points, directions)
            summary["knee"] = feasible[nd[knee_point(points[nd], directions)]].number
    summary["proxy_noise"] = proxy_noise(run, rows, quality)
    summary["selected"] = select(feasible, points, objectives, directions, budgets, extra_budgets or [], quality,
                                 top_k)
    _write_trials_csv(run.trials_csv, rows)
    _write_trials_csv(run.pareto_csv, nd_rows)
    run.selected_json.write_text(json.dumps(summary, indent=1) + "\n")
    for x in ("latency_ms", "gmacs"):
        _plot(run.pareto_plot(x), rows, nd_rows, x, quality, budgets, summary["counts"])
    _write_html(run.report_html, rows, nd_rows, quality)
    _write_markdown(run, study, summary, rows, nd_rows, quality, title)
    return summary


def proxy_noise(run: RunDir, rows: list[Row], quality: str) -> dict[str, Any] | None:
    """How far apart two trials' ``quality`` must lie for the short-run proxy to tell them apart:
    1.96 * sqrt(2) * sigma / sqrt(k), with sigma the seed std of one short run (pooled over the
    trials when each trains k >= 2 seeds, else the experiment's ``search.proxy_seed_std``) and k
    the seeds a trial averages. None for a folder without a recorded config or a supernet search;
    ``seed_std`` None when nothing measures it."""
    from ..errors import ConfigError

    try:
        config = run.load_config()
    except (ConfigError, OSError, ValueError):
        return None
    if config.search.evaluator != "short_distill":
        return None
    k = config.distill.seeds
    stds = [r.get(f"seed_std/{quality}") for r in rows if r.get(f"seed_std/{quality}") is not None]
    if stds:
        sigma, source = float(np.sqrt(np.mean(np.square(stds)))), f"pooled over {len(stds)} trials"
    elif config.search.proxy_seed_std is not None:
        sigma, source = config.search.proxy_seed_std, "search.proxy_seed_std"
    else:
        return {"seeds": k, "seed_std": None}
    return {"seeds": k, "seed_std": sigma, "source": source, "resolvable": 1.96 * np.sqrt(2) * sigma / np.sqrt(k)}


def _noise_line(noise: dict[str, Any] | None, quality: str) -> list[str]:
    if noise is None:
        return []
    if noise["seed_std"] is None:
        return [f"Proxy noise: not known. Each trial trains {noise['seeds']} seed(s) of the short run, whose "
                f"{quality} varies from seed to seed; measure that spread (experiments/benchmarks/seed_noise.py) "
                "and give it as `search.proxy_seed_std`, or set `distill.seeds` >= 2, and this report prints the "
                "smallest difference the front resolves.", ""]
    return [f"Proxy noise: one short run's {quality} varies by {noise['seed_std']:.3f} (seed std, "
            f"{noise['source']}); a trial scores the mean of {noise['seeds']} seed(s), so two trials whose "
            f"{quality} differs by less than **{noise['resolvable']:.3f}** (1.96 x sqrt 2 x std / sqrt "
            f"{noise['seeds']}) are not told apart: read the front within that margin.", ""]


def _counts(rows: list[Row]) -> dict[str, int]:
    """Trial counts; every status count is over distinct architectures (repeats are counted as reused)."""
    distinct = [r for r in rows if not r.record.is_repeat]
    counts: dict[str, int] = {"trials": len(rows), "distinct": len(distinct),
                              "reused": len(rows) - len(distinct)}
    for r in distinct:
        counts[r.status] = counts.get(r.status, 0) + 1
    counts["rejected_before_training"] = sum(1 for r in distinct if r.status == "infeasible"
                                             and not r.record.train_steps)
    counts["near_budget"] = sum(1 for r in distinct if _decision(r).get("near"))
    counts["latency_predicted"] = sum(1 for r in distinct if r.record.cost.get("latency_source") == "predicted")
    return counts


def _decision(r: Row) -> dict[str, Any]:
    return r.record.cost.get("latency_decision") or {}


def _latency_with_spread(r: Row) -> str:
    """"median [p10-p90]" of the counted towers; a near-budget decision is marked."""
    cost = r.record.cost
    if cost.get("latency_ms") is None:
        return ""
    text = f"{cost['latency_ms']:.3f}"
    if cost.get("latency_p10_ms") is not None and cost.get("latency_p90_ms") is not None:
        text += f" [{cost['latency_p10_ms']:.3f}-{cost['latency_p90_ms']:.3f}]"
    return text + (" (near budget)" if _decision(r).get("near") else "")


def _space_label(source: str | None, out: Path) -> str:
    """The space's name and its path relative to the working directory or the run (no machine paths)."""
    if not source:
        return "unknown"
    path = Path(source)
    for base in (Path.cwd(), out.resolve().parent):
        try:
            return f"{path.stem} ({path.resolve().relative_to(base.resolve())})"
        except ValueError:
            continue
    return f"{path.stem} ({path.name})"


def _worker(w: dict[str, Any] | None) -> str:
    """host:pid/device of the worker that ran a trial."""
    return "" if not w else f"{w.get('host')}:{w.get('pid')}/{w.get('device', 'cpu')}"


def _flat(r: Row) -> dict[str, Any]:
    rec = r.record
    cost, timings = rec.cost, rec.timings
    d: dict[str, Any] = {"number": r.number, "state": r.state, "status": r.status, "reason": r.reason,
                         "arch_key": rec.arch_key, "describe": rec.describe,
                         "config_json": json.dumps(rec.config, sort_keys=True),
                         "reused_from": "" if rec.reused_from is None else rec.reused_from,
                         "retry_of": "" if rec.retry_of is None else rec.retry_of,
                         "worker": _worker(rec.worker),
                         "params_m": cost.get("params_m"), "gmacs": cost.get("gmacs"), "gflops": cost.get("gflops"),
                         "latency_ms": cost.get("latency_ms"), "latency_p10_ms": cost.get("latency_p10_ms"),
                         "latency_p90_ms": cost.get("latency_p90_ms"), "latency_source": cost.get("latency_source", ""),
                         "latency_readings_ms": " ".join(f"{x:.4g}" for x in cost.get("latency_readings_ms", [])),
                         "latency_predicted_ms": cost.get("latency_predicted_ms")}
    decision = _decision(r)
    if decision:
        d.update({"near_budget": decision.get("near"), "latency_first_ms": decision.get("first_ms"),
                  "latency_rounds": len(decision.get("rounds_ms", [])),
                  "reference_median_ms": float(np.median(decision["reference_ms"])) if decision.get("reference_ms")
                  else None})
    for tower, c in sorted(cost.get("per_tower", {}).items()):
        d[f"{tower}_latency_median_ms"] = c.get("latency_median_ms")
        d[f"{tower}_latency_p90_ms"] = c.get("latency_p90_ms")
    for m in quality_metrics():
        d[m] = r.metrics.get(m)
    for k, v in sorted(r.metrics.items()):
        if k.startswith(("task/", "retrieval/", "seed_std/")) and not k.endswith("agreement"):
            d[k] = v
    d.update({"cost_s": timings.get("cost_s"), "train_s": timings.get("train_s"), "eval_s": timings.get("eval_s"),
              "train_steps": rec.train_steps})
    return d


def _write_trials_csv(path: Path, rows: list[Row]) -> None:
    flats = [_flat(r) for r in rows]
    columns: list[str] = []
    for f in flats:
        columns += [k for k in f if k not in columns]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns or ["number"])
        writer.writeheader()
        for f in flats:
            writer.writerow({k: ("" if v is None else f"{v:.6g}" if isinstance(v, float) else v) for k, v in f.items()})


def _plot(path: Path, rows: list[Row], nd_rows: list[Row], x: str, y: str, budgets: list[Budget],
          counts: dict[str, int]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)

    def xy(rs: list[Row]) -> tuple[list[float], list[float]]:
        pts = [(r.get(x), r.get(y)) for r in rs if r.get(x) is not None and r.get(y) is not None]
        return [p[0] for p in pts], [p[1] for p in pts]

    ok = [r for r in rows if r.status == "ok" and not r.record.is_repeat]
    infeasible = [r for r in rows if r.status == "infeasible" and not r.record.is_repeat]
    ax.scatter(*xy(ok), s=28, c="#8aa1c1", label="feasible trials", zorder=2)
    bad = [r for r in infeasible if r.get(x) is not None]
    if bad:  # rejected before training have no accuracy: drawn on the x axis
        ax.scatter([r.get(x) for r in bad], [r.get(y) if r.get(y) is not None else 0.0 for r in bad], marker="x",
                   s=30, c="#d62728", label="over budget", zorder=2)
    fx, fy = xy(sorted(nd_rows, key=lambda r: r.get(x) or 0.0))
    if fx:
        ax.plot(fx, fy, "-o", c="#ff7f0e", ms=7, lw=1.5, label="Pareto front", zorder=3)
        for r in nd_rows:
            ax.annotate(f"#{r.number}", (r.get(x), r.get(y)), textcoords="offset points", xytext=(4, 4), fontsize=7)
    for b in budgets:
        if b.metric == x:
            ax.axvline(b.value, ls="--", c="#d62728", lw=1, label=f"budget {b}")
    ax.set_xlabel(_axis_label(x))
    ax.set_ylabel(_axis_label(y))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(f"{y} vs {x}: {counts.get('ok', 0)} feasible students, {counts.get('infeasible', 0)} over budget "
                 f"({counts['distinct']} distinct of {counts['trials']} trials)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _axis_label(metric: str) -> str:
    return METRICS[metric].axis_label if metric in METRICS else metric


def _write_html(path: Path, rows: list[Row], nd_rows: list[Row], y: str) -> None:
    import plotly.graph_objects as go

    front_ids = {r.number for r in nd_rows}
    fig = go.Figure()
    for label, pick, symbol in (("feasible", lambda r: r.status == "ok" and r.number not in front_ids, "circle"),
                                ("Pareto front", lambda r: r.number in front_ids, "star"),
                                ("over budget", lambda r: r.status == "infeasible", "x")):
        rs = [r for r in rows if pick(r) and r.get("latency_ms") is not None]
        fig.add_trace(go.Scatter(
            x=[r.get("latency_ms") for r in rs], y=[r.get(y) if r.get(y) is not None else 0.0 for r in rs],
            mode="markers", name=label, marker={"symbol": symbol, "size": 10},
            text=[f"trial {r.number} ({r.record.arch_key})<br>{r.record.describe}<br>"
                  f"params {r.get('params_m') or 0:.2f} M, {r.get('gmacs') or 0:.3f} GMACs<br>"
                  f"{json.dumps(r.record.config)}" for r in rs], hoverinfo="text+x+y"))
    fig.update_layout(title=f"{y} vs latency (hover for each trial's config)",
                      xaxis_title="latency_ms (median, counted towers)", yaxis_title=y, template="plotly_white")
    fig.write_html(path, include_plotlyjs=True, full_html=True)


def _pred(r: Row) -> str:
    return " *pred.*" if r.record.cost.get("latency_source") == "predicted" else ""


def _fmt(v: Any, digits: int = 3) -> str:
    return "" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _evaluator_label(fingerprint: dict[str, Any]) -> str:
    """How the study's trials scored their students (its ``search.evaluator``)."""
    evaluator = fingerprint.get("evaluator") or {"name": "short_distill"}
    if evaluator["name"] != "supernet":
        return f"a short DIME-FM run of each from scratch (`{evaluator['name']}`)"
    s = evaluator.get("supernet", {})
    return (f"the weights of one weight-sharing supernet (`supernet`: trained {s.get('steps')} steps, then "
            f"{s.get('finetune_steps')} fine-tuning steps per student)")


def _write_markdown(run: RunDir, study: optuna.Study, summary: dict[str, Any], rows: list[Row], nd_rows: list[Row],
                    quality: str, title: str | None) -> None:
    c = summary["counts"]
    target = summary.get("target") or {}
    lines = [f"# {title or 'dime_nas search report'}: {study.study_name}", "",
             "## Setup", "",
             f"- objectives: {', '.join(f'{o} ({d})' for o, d in zip(summary['objectives'], summary['directions']))}",
             f"- budgets: {', '.join(summary['budgets']) or 'none'}",
             f"- latency target: `{target.get('name')}` - {target.get('description', '')}",
             f"- search space: `{_space_label(study.user_attrs.get('space'), run.path)}`",
             f"- students scored by: {_evaluator_label(study.user_attrs.get('fingerprint') or {})}",
             f"- trials: {c['trials']}, of which {c['distinct']} distinct architectures ({c.get('ok', 0)} feasible, "
             f"{c.get('infeasible', 0)} over budget of which {c['rejected_before_training']} rejected before "
             f"training, {c.get('pruned', 0)} pruned, {c.get('failed', 0)} failed) and {c['reused']} repeats that "
             "reused an earlier result",
             f"- near-budget latency decisions: {c['near_budget']} (first median within the margin of a budget: "
             "re-measured beside a reference tower, decided on the pooled median)",
             f"- latency decided by prediction, not measured: {c['latency_predicted']} trial(s) "
             "(`latency_source` in trials.csv; marked *pred.* below)", ""]
    hv = summary.get("hypervolume")
    if hv:
        lines += [f"Hypervolume of the front: **{hv['value']:.4g}** against reference point "
                  f"{[round(v, 4) for v in hv['reference']]} ({hv['reference_rule']}).", ""]
    lines += ["## Pareto front", "", "| trial | architecture | params (M) | GMACs | latency (ms) median [p10-p90] | "
              f"{quality} | key |", "|---|---|---|---|---|---|---|"]
    for r in sorted(nd_rows, key=lambda r: r.get("latency_ms") or 0.0):
        lines.append(f"| {r.number} | {r.record.describe} | {_fmt(r.get('params_m'), 2)} | "
                     f"{_fmt(r.get('gmacs'), 4)} | {_latency_with_spread(r)}{_pred(r)} | {_fmt(r.get(quality))} | "
                     f"`{r.record.arch_key}` |")
    lines += ["", *_noise_line(summary.get("proxy_noise"), quality), "![accuracy vs latency](pareto_latency.png)", "", "![accuracy vs MACs](pareto_macs.png)", "",
              "Interactive version (hover shows each trial's config): [report.html](report.html).", "",
              "## Selected students", ""]
    for p in summary["selected"]:
        m = p["metrics"]
        lines.append(f"- **trial {p['trial']}** `{p['arch_key']}` {p['describe']}: {quality} "
                     f"{_fmt(m.get(quality))}, latency {_fmt(m.get('latency_ms'), 2)} ms, "
                     f"{_fmt(m.get('params_m'), 2)} M params - {'; '.join(p['why'])}")
    if not summary["selected"]:
        lines.append("No feasible trial yet.")
    if run.distill_results.exists():
        results = json.loads(run.distill_results.read_text())
        lines += ["", "## Full distillation (short-run proxy vs full run)", "",
                  f"The headline is **{quality} on the held-out test split**: no trial and no selection saw it. "
                  "The proxy and the full run's validation score are on the validation split that chose these "
                  "students, so they are biased upwards.", "",
                  f"| trial | key | steps | **test {quality}** | full {quality} (validation) | proxy {quality} "
                  "(validation) | proxy latency (ms) | full latency (ms) | params (M) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in results:
            lines.append(f"| {r['trial']} | `{r['arch_key']}` | {r['steps']} | "
                         f"**{_fmt(r.get('test', {}).get(quality))}** | {_fmt(r['full'].get(quality))} | "
                         f"{_fmt(r['proxy'].get(quality))} | {_fmt(r['proxy'].get('latency_ms'), 2)} | "
                         f"{_fmt(r['full'].get('latency_ms'), 2)} | {_fmt(r['full'].get('params_m'), 2)} |")
    lines += ["", "## How to read this report", "",
              "Each point is one trial. Up and to the left is better (more accurate, faster); red crosses are "
              "students over budget, rejected before training (drawn at accuracy 0). The Pareto front joins "
              "the students no other student beats on every objective at once; the knee is where extra accuracy "
              "starts to cost disproportionately more latency. Accuracy here is the *short-run proxy* on the "
              "*validation split* (the evaluation images not held out for testing): a few hundred "
              "distillation steps, good for ranking, not a final number - run "
              "`dime-nas distill RUN_DIR --select knee` for the full result. Latencies are medians with the "
              "p10-p90 spread of the timed calls in brackets; \"(near budget)\" marks a student whose first "
              "median lay within the margin of a budget: it was re-measured beside a fixed reference tower "
              "and decided on the pooled median of all rounds (the spread is then over rounds). Counts are "
              "over distinct architectures: a repeat reuses the earlier result. `trials.csv` has every trial "
              "(config, cost, per-task scores, timings); `pareto.csv` only the front; `selected.json` the "
              "picks with reasons.", ""]
    run.report_md.write_text("\n".join(lines))
