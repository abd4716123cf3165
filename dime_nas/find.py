"""From a budget to a verified deliverable: what ``dime-nas find`` does.

Stages, each resumable (a killed ``find`` run again picks up where it stopped):

1. **search**: run or continue the experiment's search with the find's budgets added to
   its own, in the find's run folder (a complete search returns at once);
2. **select**: the feasible students in the order of the front, most accurate first (then
   the front of the students left, and so on), at most ``deliverable.candidates``;
3. **distil** the candidate fully: the hand-off's full run (``handoff.distill_selected``),
   resumed from its checkpoint; one recorded in ``distill_results.json`` is not run again.
   How the hand-off starts a full run (from scratch, or from weights a study trained) applies
   here unchanged;
4. **export** it (``api.export``); an export made from the same checkpoint is kept;
5. **verify** it on the target (``verify.py``); a verification of the same files, target,
   budgets and settings is kept. When what ships misses a budget there, say why and move to
   the next candidate.

``find.json`` in the run folder records every candidate tried and the time of each call.
"""
from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import PRECISIONS, ExperimentConfig, run_dir
from .errors import ConfigError
from .fs import write_atomic
from .metrics import METRICS, Budget, headline_quality
from .run_dir import RunDir

STAGES = ("search", "distill", "export", "verify")


@dataclass
class FindOutcome:
    """What :func:`find` found, tried and spent."""

    run: RunDir  # the find's run folder
    budgets: list[str]  # every budget that applied (the experiment's and the find's)
    target: str
    chosen: dict[str, Any] | None  # the candidate whose deliverable passed (None: none did)
    attempts: list[dict[str, Any]] = field(default_factory=list)  # every candidate verified, in order
    seconds: dict[str, float] = field(default_factory=dict)  # this call: prepare, search, distill, export, verify
    message: str = ""  # one line: what was found, or why nothing was


def default_find_dir(config: ExperimentConfig, budgets: list[Budget], target: str | None) -> Path:
    """``<out_dir>-find-<budgets>[-on-<target>]``: beside the experiment's own run, one per question."""
    slug = "-".join(f"{b.metric}-{'le' if b.op == '<=' else 'ge'}-{b.value:g}" for b in budgets)
    base = run_dir(config)
    return base.with_name(f"{base.name}-find-{slug}" + (f"-on-{target}" if target else ""))


def find(experiment: str | Path | ExperimentConfig, budgets: list[str | Budget], *, target: str | None = None,
         precision: str | None = None, out: str | Path | None = None, trials: int | None = None,
         progress: bool = True, say: Callable[[str], None] | None = None) -> FindOutcome:
    """Search (or continue), then distil, export and verify students along the front until one
    meets every budget on the target.

    Args:
        budgets: e.g. ``["latency_ms <= 5"]``; the experiment's own budgets apply too.
        target: the target to search and verify on (default: the experiment's).
        precision: fp32, int8 or auto (default: ``deliverable.precision``).
        out: the run folder (default: :func:`default_find_dir`).
        trials: distinct architectures the search should hold (default: ``search.trials``).
        say: receives one line per stage (default: print when ``progress``).

    Raises:
        ConfigError: a bad budget, target or precision; a run folder of other settings.
        KeyboardInterrupt: interrupted; what finished is kept and a rerun continues.
    """
    from . import api
    from .config import with_budgets
    from .cost.targets import get_target

    say = say or (print if progress else (lambda _: None))
    base = api.load(experiment)
    wanted = [b if isinstance(b, Budget) else Budget.parse(b) for b in budgets]
    if not wanted:
        raise ConfigError("find needs a budget, e.g. --budget 'latency_ms <= 5'", key="--budget")
    precision = precision or base.deliverable.precision
    if precision not in PRECISIONS:
        raise ConfigError(f"must be one of {', '.join(PRECISIONS)}, got {precision!r}", key="--precision")
    config = with_budgets(base, wanted, target)
    run = RunDir(out) if out is not None else RunDir(default_find_dir(base, wanted, target))
    target_obj = get_target(config.target, config.targets_file)
    all_budgets = config.budget_list
    seconds = dict.fromkeys(("prepare", *STAGES), 0.0)
    start = time.time()

    say(f"[1/4 search] {run.path}: budgets {', '.join(map(str, all_budgets))} on {target_obj.name}")
    searched = api.search(config, out=run.path, trials=trials, progress=progress)
    seconds["prepare"], seconds["search"] = searched.prepare_seconds, searched.seconds - searched.prepare_seconds
    if searched.interrupted:
        raise KeyboardInterrupt
    recorded = run.load_config()
    candidates = candidates_along_front(searched.study, all_budgets, recorded.deliverable.candidates)
    outcome = FindOutcome(run, [str(b) for b in all_budgets], target_obj.name, None, seconds=seconds)
    if not candidates:
        c = searched.summary["counts"]
        outcome.message = (f"no student of the search meets {', '.join(map(str, all_budgets))}: "
                           f"{c['distinct']} distinct evaluated, {c.get('infeasible', 0)} over budget; widen the "
                           "budget or the space, or search longer (--trials)")
        return _finish(outcome, precision, start)
    say("[select] candidates along the front, most accurate first: "
        + "; ".join(f"trial {p['trial']} ({p['describe']}, proxy {_proxy(p)})" for p in candidates))

    for i, pick in enumerate(candidates):
        attempt = _attempt(run, recorded, pick, target_obj, all_budgets, precision, progress, say, seconds)
        outcome.attempts.append(attempt)
        _record(run, outcome, precision, start)
        if attempt["passes"]:
            outcome.chosen = attempt
            break
        missed = "; ".join(b["text"] for b in attempt["budgets"] if not b["passes"])
        nxt = (f"moving to the next student along the front, trial {candidates[i + 1]['trial']}"
               if i + 1 < len(candidates) else "no candidate left")
        say(f"trial {pick['trial']} misses on {target_obj.name} as shipped ({attempt['shipped']['precision']}): "
            f"{missed}; {nxt}")
    outcome.message = summary_line(outcome) if outcome.chosen else (
        f"none of the {len(outcome.attempts)} student(s) verified meets every budget on {target_obj.name} "
        f"(deliverable.candidates = {recorded.deliverable.candidates}); see {run.path / 'find.json'}")
    return _finish(outcome, precision, start)


def candidates_along_front(study: Any, budgets: list[Budget], limit: int) -> list[dict[str, Any]]:
    """Feasible students meeting ``budgets``, front by front (the front, then the front of the
    rest, ...), most accurate first within each; the first ``limit``."""
    from .search.pareto import non_dominated
    from .search.report import collect, front

    objectives = study.user_attrs.get("objectives") or ["accuracy"]
    directions = [d.name.lower() for d in study.directions]
    feasible, points, _ = front(collect(study), objectives, directions)
    keep = [i for i, r in enumerate(feasible) if all(
        r.get(b.metric) is None or b.violation(r.get(b.metric)) <= 0 for b in budgets)]
    quality = headline_quality(objectives, default=objectives[0])
    sign = 1.0 if quality not in METRICS or METRICS[quality].direction == "maximize" else -1.0
    ordered: list[int] = []
    while keep and len(ordered) < limit:
        layer = [keep[j] for j in non_dominated(points[keep], directions)]
        ordered += sorted(layer, key=lambda i: -sign * (feasible[i].get(quality) or 0.0))
        keep = [i for i in keep if i not in layer]
    return [{"trial": feasible[i].number, "arch_key": feasible[i].record.arch_key,
             "describe": feasible[i].record.describe, "quality": quality,
             "metrics": {m: feasible[i].get(m) for m in METRICS if feasible[i].get(m) is not None}}
            for i in ordered[:limit]]


def _attempt(run: RunDir, config: ExperimentConfig, pick: dict[str, Any], target: Any, budgets: list[Budget],
             precision: str, progress: bool, say: Callable[[str], None], seconds: dict[str, float]) -> dict[str, Any]:
    """Distil, export and verify one candidate, skipping every stage already done."""
    from . import api
    from .verify import verify_export

    key = pick["arch_key"]
    t0 = time.time()
    full = _full_run(run, key)
    if full is None:
        say(f"[2/4 distil] trial {pick['trial']} `{key}` {pick['describe']}: {config.full_distill.steps} steps")
        api.distill_selected(run, f"trial:{pick['trial']}", progress=progress, export=False)
        full = _full_run(run, key)
        if full is None:  # torchrun: another rank; or the hand-off refused the pick
            raise RuntimeError(f"the full run of trial {pick['trial']} recorded no result in {run.distill_results}")
    else:
        say(f"[2/4 distil] trial {pick['trial']} `{key}`: done before ({full['steps']} steps), not run again")
    seconds["distill"] += time.time() - t0

    t0 = time.time()
    export_dir = run.export_dir(key)
    if _exported(export_dir, full):
        say(f"[3/4 export] {export_dir}: made before from the same checkpoint")
    else:
        say(f"[3/4 export] {export_dir}")
        api.export(run.full_run(key), out=export_dir)
    seconds["export"] += time.time() - t0

    t0 = time.time()
    verification = _verified(export_dir, target, budgets, precision, config)
    if verification is None:
        say(f"[4/4 verify] {export_dir} on {target.name}")
        verification = verify_export(export_dir, config, target, budgets, precision=precision, progress=progress,
                                     say=say)
    else:
        say(f"[4/4 verify] {export_dir}: verified before with the same target, budgets and settings")
    seconds["verify"] += time.time() - t0
    ship = verification["variants"][verification["shipped"]["variant"]]
    metric = verification["metric"]
    return {"trial": pick["trial"], "arch_key": key, "describe": pick["describe"], "proxy": pick["metrics"],
            "export": str(export_dir), "steps": full["steps"], "test": full.get("test", {}).get(metric),
            "metric": metric, "torch_test": verification["torch"][metric],
            "shipped": verification["shipped"], "shipped_test": ship[metric],
            "fp32_test": verification["variants"]["fp32"][metric],
            "int8": verification["int8"], "int8_test": (verification["variants"][verification["int8"]][metric]
                                                        if verification["int8"] else None),
            "latency_ms": ship["total_median_ms"], "latency_interval_ms": ship["total_interval_ms"],
            "latency": {n: {"median_ms": v["total_median_ms"], "interval_ms": v["total_interval_ms"]}
                        for n, v in verification["variants"].items()},
            "budgets": verification["budgets"], "passes": verification["passes"],
            "device": verification["device"]}


def _full_run(run: RunDir, key: str) -> dict[str, Any] | None:
    if not run.distill_results.is_file():
        return None
    return next((r for r in json.loads(run.distill_results.read_text()) if r["arch_key"] == key), None)


def _exported(export_dir: Path, full: dict[str, Any]) -> bool:
    """An export of this full run (its steps, its scores) with every file its card names."""
    path = export_dir / "model_card.json"
    try:
        card = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return (card.get("steps") == full["steps"] and card.get("test") == full.get("test")
            and all((export_dir / f).is_file() for f in card.get("files", {}).values()))


def _verified(export_dir: Path, target: Any, budgets: list[Budget], precision: str,
              config: ExperimentConfig) -> dict[str, Any] | None:
    """The export's verification when it was made for this target, budgets, precision and settings."""
    from .deliverable import VERIFICATION

    try:
        v = json.loads((export_dir / VERIFICATION).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    same = (v.get("target") == target.to_dict() and [b["budget"] for b in v.get("budgets", [])] == list(map(str, budgets))
            and v.get("precision_mode") == precision and v.get("settings") == dataclasses.asdict(config.deliverable))
    return v if same else None


def _proxy(pick: dict[str, Any]) -> str:
    m = pick["metrics"]
    return ", ".join(f"{k} {m[k]:.3g}" for k in (pick["quality"], "latency_ms") if k in m)


def summary_line(outcome: FindOutcome) -> str:
    """The found student in one paragraph: accuracy, verified latency with spread and margin, precision, folder."""
    c = outcome.chosen
    if c is None:
        return outcome.message
    shipped = c["shipped"]
    lo, hi = c["latency_interval_ms"]
    latency = next((b for b in c["budgets"] if b["budget"].startswith("latency_ms")), None)
    margin = (f", {'within' if latency['passes'] else 'over'} {latency['budget']} by {abs(latency['margin']):.3g} ms "
              f"({abs(latency['margin_fraction']):.0%}"
              + (", beyond the timing noise)" if latency.get("beyond_noise") else ", within the timing noise)")
              if latency else "")
    precision = shipped["precision"] + (f" ({shipped['quantization']})" if shipped["quantization"] else "")
    return (f"trial {c['trial']} `{c['arch_key']}` {c['describe']}: test {c['metric']} {c['shipped_test']:.3f} as "
            f"shipped ({precision}; fp32 {c['fp32_test']:.3f}, torch {c['torch_test']:.3f}); latency on "
            f"{outcome.target} {c['latency_ms']:.4g} ms [{lo:.4g}-{hi:.4g}]{margin}; folder {c['export']}")


def _record(run: RunDir, outcome: FindOutcome, precision: str, start: float) -> None:
    """find.json: the candidates tried so far and the time of every call (this one last)."""
    path = run.path / "find.json"
    try:
        calls = json.loads(path.read_text()).get("calls", [])
    except (OSError, json.JSONDecodeError):
        calls = []
    calls = [c for c in calls if c.get("started") != start]
    calls.append({"started": start, "seconds": {**outcome.seconds, "total": time.time() - start}})
    write_atomic(path, json.dumps({"budgets": outcome.budgets, "target": outcome.target, "precision": precision,
                                   "attempts": outcome.attempts, "chosen": outcome.chosen,
                                   "message": outcome.message, "calls": calls}, indent=1, default=str) + "\n")


def _finish(outcome: FindOutcome, precision: str, start: float) -> FindOutcome:
    outcome.seconds["total"] = time.time() - start
    _record(outcome.run, outcome, precision, start)
    return outcome

