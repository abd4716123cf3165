"""The search loop: an Optuna study over students, robust to failures and interruptions.

- Storage: a SQLite file in the run directory by default (one process); any Optuna
  URL (PostgreSQL/MySQL for parallel workers, ``journal:PATH`` for a journal file).
- ``trials: N`` asks for N distinct architectures: a repeat of an architecture the study
  already evaluated reuses its result and does not count. ``max_trials`` (default 3 N)
  caps all trials, repeats included, so a small space cannot loop for ever.
- A continued study reseeds its sampler from the seed and the number of trials already
  in the study, so it proposes new architectures instead of replaying its first ones.
- Rerunning the same command continues the study; trials left RUNNING by a killed
  process are marked FAIL ("interrupted") first, so a ``kill -9`` loses only the trial
  in flight.
- Ctrl-C stops after the current trial (a second Ctrl-C stops at once, failing it).
- A trial that raises is recorded FAIL with its reason; the study goes on.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from ..config import ExperimentConfig
from ..errors import ConfigError
from ..run_dir import RunDir
from ..typed_yaml import to_plain
from .objective import TrialContext
from .record import TrialRecord, trial_status
from .samplers import make_sampler, prepare_study
from .storage import ClaimLock, is_database, mask_url, open_storage, retry_callback, with_retries
from .worker import work_on

_log = logging.getLogger(__name__)
ORPHAN_GRACE_S = 120  # a RUNNING trial with no worker recorded after this long was orphaned by a kill


FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)


@dataclass
class StudyRun:
    """What one call of :func:`run_search` did."""

    study: optuna.Study
    already_done: int  # finished trials found when the search started
    new_trials: int  # trials finished by this call
    interrupted: bool  # stopped by Ctrl-C
    seconds: float
    distinct: int  # distinct architectures evaluated in the study (what ``trials`` counts)
    capped: bool  # stopped by max_trials before reaching the distinct count asked for


def trial_counts(study: optuna.Study) -> tuple[int, int]:
    """(distinct architectures evaluated, finished trials).

    A reuse of an earlier result is not distinct; nor is a trial cut short by a killed
    process (status ``interrupted``): its architecture was never evaluated.
    """
    finished = study.get_trials(deepcopy=False, states=FINISHED)
    evaluated = [t for t in finished if not TrialRecord.from_trial(t).is_repeat and trial_status(t) != "interrupted"]
    return len(evaluated), len(finished)


def teacher_identity(teacher: dict[str, Any]) -> dict[str, Any]:
    """A plain teacher section without where and in what batches the teacher runs: those do not
    change its embeddings."""
    return {k: v for k, v in teacher.items() if k not in ("device", "batch_size", "cache_dir")}


def experiment_fingerprint(config: ExperimentConfig, ctx: TrialContext) -> dict[str, Any]:
    """What changes a trial's result: the teacher, corpora, evaluation, space, target, objectives,
    budgets, short-run settings, evaluator and the rules that decide a latency or prune a trial.
    A study holds trials of one fingerprint only."""
    plain = to_plain(config)
    teacher = teacher_identity(plain["teacher"])
    space = hashlib.sha256(Path(ctx.space.source).read_bytes()).hexdigest() if Path(ctx.space.source).is_file() \
        else ctx.space.source
    distill = plain["distill"]
    if all(kind == "teacher" for kind in ctx.space.kinds["text"]):
        distill["text_tower_step_scale"] = 1.0  # no student text tower here: the scale changes no trial
    evaluator = {"name": config.search.evaluator}
    if config.search.evaluator == "supernet":  # its recipe makes every score
        evaluator["supernet"] = plain["supernet"]
    search = plain["search"]
    # how a trial's latency is decided (re-measured near a budget, predicted far from it) and whether it is pruned
    decisions = {"near_budget_margin": search["near_budget_margin"], "near_budget_rounds": search["near_budget_rounds"],
                 "latency_predictor": plain["latency_predictor"], "prune": search["prune"]}
    fingerprint = {"teacher": teacher, "data": plain["data"], "eval": plain["eval"], "space": space,
                   "target": ctx.meter.target.to_dict(), "objectives": [o.metric for o in ctx.objectives],
                   "budgets": [str(b) for b in ctx.budgets], "distill": distill, "evaluator": evaluator,
                   "decisions": decisions}
    return json.loads(json.dumps(fingerprint, sort_keys=True, default=str))


# Settings added to the fingerprint after studies were recorded, each with the value that
# behaves as the toolkit did before it existed: a study recorded without one continues.
ADDED_SETTINGS = {"distill": {"seeds": 1, "text_tower_step_scale": 1.0, "init": "scratch"},
                  "evaluator": {"name": "short_distill"},
                  "decisions": {"near_budget_margin": 0.15, "near_budget_rounds": 4, "latency_predictor": None,
                                "prune": True}}


def with_added_settings(recorded: dict[str, Any]) -> dict[str, Any]:
    """A recorded fingerprint with the settings added since filled in at their old behaviour (and a
    target recorded before backend settings moved under its ``options``, as recorded now)."""
    from ..cost.targets import upgrade_recorded

    out = {k: dict(v) if isinstance(v, dict) else v for k, v in recorded.items()}
    if isinstance(out.get("target"), dict):
        out["target"] = upgrade_recorded(out["target"])
    for section, values in ADDED_SETTINGS.items():
        if isinstance(out.get(section), dict):
            out[section] = {**values, **out[section]}
        elif section not in out:  # a whole section added since
            out[section] = dict(values)
    return out


def first_difference(old: Any, new: Any, key: str = "") -> str | None:
    """The first dotted key (in sorted order) whose value differs between two plain structures."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new)):
            found = first_difference(old.get(k), new.get(k), f"{key}.{k}" if key else k)
            if found:
                return found
        return None
    return None if old == new else (key or "<root>")


def _lookup(d: Any, key: str) -> Any:
    for part in key.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d


def run_search(config: ExperimentConfig, ctx: TrialContext, run: RunDir, url: str, *, trials: int | None = None,
               force: bool = False, progress: bool = True) -> StudyRun:
    """Create (or continue, or join) the study at ``url`` and take part in it until it holds
    ``trials`` distinct evaluated architectures, the cap on all trials is reached, or time runs out.

    Several processes (``dime-nas worker``) may run this on one database storage at once.
    The caller has claimed ``run`` (see ``dime_nas.api.search``).
    """
    study, storage_obj = join_study(config, ctx, url, run=run, force=force)
    database = is_database(url)

    def fail_stale(s: optuna.Study) -> None:
        # retried as a whole: failing a trial is not repeatable call by call (trials also call this while waiting)
        with_retries("failing the trials of dead workers", lambda: _fail_interrupted(
            s, heartbeat=database, retries=config.search.retries,
            orphan_grace_s=config.search.grace_s if database else ORPHAN_GRACE_S))

    fail_stale(study)
    ctx.fail_stale = fail_stale
    distinct, already = trial_counts(study)
    want = trials if trials is not None else config.search.trials
    cap = config.search.max_trials or (3 * want if want is not None else None)
    if already and progress:
        print(f"continuing study {config.name!r}: {already} trial(s) already done ({distinct} distinct "
              f"architectures) in {mask_url(url)}", flush=True)
    prepare_study(config, study, ctx)  # e.g. the grid's points queued
    start = time.time()
    bar = _TrialBar(progress, want, distinct, study)
    try:
        result = work_on(study, ctx, ClaimLock(url, storage_obj, config.name), want=want, cap=cap,
                         timeout_s=config.search.timeout_s, counts=_counts, fail_stale=fail_stale,
                         on_trial=bar.update)
    finally:
        bar.close()
    return StudyRun(study, already, result.new_trials, result.interrupted, time.time() - start,
                    distinct=trial_counts(study)[0], capped=result.capped)


def load_run_study(run: RunDir) -> optuna.Study:
    """The study a run folder recorded (by the experiment's name, in the recorded storage)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = run.load_config().name
    try:
        return optuna.load_study(study_name=name, storage=open_storage(run.storage))
    except KeyError:
        raise ConfigError(f"{run.path}: no study {name!r} in {mask_url(run.storage)}") from None


def join_study(config: ExperimentConfig, ctx: TrialContext, url: str, *, run: RunDir, force: bool = False
               ) -> tuple[optuna.Study, optuna.storages.BaseStorage]:
    """Open or create the experiment's study, refusing one recorded with different settings.

    ``force`` starts a new study (the old one is copied to ``run.previous_study(<time>)``).
    """
    directions = [o.direction for o in ctx.objectives]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    s = config.search
    storage = open_storage(url, heartbeat_s=s.heartbeat_s, grace_s=s.grace_s, retries=s.retries)
    pruner = _pruner()
    # the sampler is set at the end, seeded for this worker and the study's size
    study = optuna.create_study(study_name=config.name, storage=storage, directions=directions, load_if_exists=True,
                                pruner=pruner)
    fingerprint = experiment_fingerprint(config, ctx)
    recorded = study.user_attrs.get("fingerprint")
    if recorded is not None:
        recorded = with_added_settings(recorded)
    if recorded is not None and recorded != fingerprint:
        key = first_difference(recorded, fingerprint)
        if not force:
            raise ConfigError(f"the study {config.name!r} in {mask_url(url)} was run with {key} = "
                              f"{_lookup(recorded, key)!r}, this experiment has {_lookup(fingerprint, key)!r}: "
                              "trials of different settings must not mix. Use another --out or --storage, or "
                              "--force to start a new study (the old one is kept in the run directory)", key=key)
        _restart_study(study, url, run, directions, config)
        study = optuna.load_study(study_name=config.name, storage=storage, pruner=pruner)
    if [d.name.lower() for d in study.directions] != directions:
        raise ConfigError(f"the study {config.name!r} in {mask_url(url)} has directions "
                          f"{[d.name.lower() for d in study.directions]}, this experiment asks for {directions}: "
                          "use another --out or --storage", key="objectives")
    if recorded is None:
        study.set_user_attr("fingerprint", fingerprint)
        study.set_user_attr("objectives", [o.metric for o in ctx.objectives])
        study.set_user_attr("budgets", [str(b) for b in ctx.budgets])
        study.set_user_attr("target", ctx.meter.target.to_dict())
        study.set_user_attr("space", ctx.space.source)
        study.set_user_attr("hv_reference", config.search.hv_reference)
    # workers sharing a database each get their own seed, or they would propose the same students
    shared = is_database(url) or config.search.local_workers > 1
    salt = f"{socket.gethostname()}:{os.getpid()}" if shared else ""
    study.sampler = make_sampler(config, len(directions), len(study.get_trials(deepcopy=False)), salt)
    return study, storage


def _counts(study: optuna.Study) -> tuple[int, int, int]:
    distinct, total = trial_counts(study)
    return distinct, total, len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)))


def _restart_study(study: optuna.Study, url: str, run: RunDir, directions: list[str],
                   config: ExperimentConfig) -> None:
    """Keep a copy of the study in the run folder, then start it afresh under the same name (the
    caller loads it with its pruner and sets its sampler)."""
    backup = run.previous_study(time.strftime('%Y%m%d-%H%M%S'))
    optuna.copy_study(from_study_name=study.study_name, from_storage=open_storage(url),
                      to_storage=f"sqlite:///{backup.resolve()}")
    optuna.delete_study(study_name=study.study_name, storage=open_storage(url))
    _log.warning("started a new study %r; the previous one is kept in %s", study.study_name, backup)
    optuna.create_study(study_name=config.name, storage=open_storage(url), directions=directions)


def _pruner() -> optuna.pruners.BasePruner:
    """A trial far below the median is stopped once 4 trials have finished, from its second report."""
    return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=1)


def _fail_interrupted(study: optuna.Study, *, heartbeat: bool = False, orphan_grace_s: float = ORPHAN_GRACE_S,
                      retries: int = 1) -> None:
    """Trials whose worker is gone become FAIL (status ``interrupted``) and are queued again.

    Database storages: by Optuna's heartbeats (``fail_stale_trials`` re-queues them).
    Local storages: each trial records the host and pid running it, and a RUNNING trial
    of this host whose process is gone was interrupted; live processes' trials and
    other hosts' trials are left alone. Everywhere: a trial that never got its worker
    recorded (killed right after ``ask``) is stale once older than ``orphan_grace_s``.
    """
    if heartbeat:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
    host, now = socket.gethostname(), datetime.datetime.now()
    stale = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        worker = TrialRecord.from_trial(t).worker
        if worker is None:
            started = t.datetime_start or now
            if (now - started).total_seconds() > orphan_grace_s:
                stale.append(t)
        elif not heartbeat and worker.get("host") == host and not _alive(worker.get("pid", -1)):
            stale.append(t)
    retry = retry_callback(retries)
    failed = [t for t in stale if _fail_if_running(study, t)]
    for t in failed:
        if retries:
            retry(study, t)
    if failed:
        _log.warning("marked %d interrupted trial(s) as failed%s", len(failed),
                     " and queued them again" if retries else "")


def _fail_if_running(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
    """Fail a trial; False when another worker finished or failed it first (then it, not this
    one, queues the retry: two workers must not both queue one)."""
    try:
        return study._storage.set_trial_state_values(trial._trial_id, state=optuna.trial.TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    return True


class _TrialBar:
    """One bar over trials: best-so-far and feasible count in the postfix."""

    def __init__(self, enabled: bool, total: int | None, initial: int, study: optuna.Study):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=initial, desc="search", unit="student", disable=not enabled,
                        dynamic_ncols=True, position=0)
        self.update(study, advance=False)

    def update(self, study: optuna.Study, advance: bool = True) -> None:
        if advance:  # the bar counts distinct architectures, as ``trials`` does
            self.bar.update(trial_counts(study)[0] - self.bar.n)
        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        records = ((t, TrialRecord.from_trial(t)) for t in complete)
        feasible = [(t, r) for t, r in records if r.status == "ok"]
        failed = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,)))
        # distinct students, as the bar and the report count them: a repeat is not a second feasible one
        post = {"feasible": len({r.arch_key for _, r in feasible}), "failed": failed}
        if feasible:
            metric = study.user_attrs.get("objectives", ["value"])[0]
            sign = 1 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else -1
            best = max((t for t, _ in feasible), key=lambda t: sign * t.values[0])
            post[f"best {metric}"] = f"{best.values[0]:.3f}"
        self.bar.set_postfix(post, refresh=True)

    def close(self) -> None:
        self.bar.close()
