"""The toolkit's public functions: one per job, each the whole pipeline of a ``dime-nas`` command.

    outcome = search("experiments/demo.yaml", trials=8)       # teacher, cache, study, report
    report(outcome.run)                                       # rewrite the report (e.g. other budgets)
    results = distill_selected(outcome.run, "knee")           # full runs of the picks, exported
    exported = export(outcome.run.full_run(key))              # again, elsewhere
    found = find("experiments/demo.yaml", ["latency_ms <= 0.1"])  # budget -> verified deliverable
    checked = verify(found.chosen["export"], target="local-cpu")     # the same files, another target

Heavy libraries (torch, optuna) are imported inside the functions, so importing this
module (and ``dime_nas``) stays instant.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from .run_dir import RunDir

if TYPE_CHECKING:
    import optuna

    from .config import ExperimentConfig
    from .find import FindOutcome
    from .metrics import Budget


@dataclass
class SearchOutcome:
    """What :func:`search` did and where its results are."""

    run: RunDir  # the run folder (report, study, config)
    study: optuna.Study
    storage: str  # the study's storage URL
    already_done: int  # finished trials found when the search started
    new_trials: int  # trials finished by this call
    distinct: int  # distinct architectures evaluated in the study (what ``trials`` counts)
    interrupted: bool  # stopped by Ctrl-C
    capped: bool  # stopped by max_trials before reaching the distinct count asked for
    train_steps: int  # optimiser steps this call's trials took
    prepare_seconds: float  # teacher, data and feature cache
    search_seconds: float  # the trials
    seconds: float  # the whole call, report included
    summary: dict[str, Any]  # the report's summary: counts, front, selected (as in selected.json)


@dataclass
class Exported:
    """What :func:`export` wrote."""

    out: Path  # the deliverable's folder
    card: dict[str, Any]  # its model card (files, cost, metrics)


def load(experiment: str | Path | ExperimentConfig) -> ExperimentConfig:
    """An experiment config from a YAML path (validated), or the config itself."""
    from .config import ExperimentConfig, load_experiment

    return experiment if isinstance(experiment, ExperimentConfig) else load_experiment(experiment)


def preflight(config: ExperimentConfig) -> None:
    """Refuse, before anything runs, what this machine cannot do of an experiment: a CUDA device
    asked for where there is none, a target its backend cannot measure from here (a GPU execution
    provider missing, say: its budget must not be judged on CPU timings). Reading a config
    probes nothing; the commands that run one call this first.

    Raises:
        ConfigError: naming the key (``distill.device``, ``full_distill.device``, ``target``).
    """
    from .cost.latency import check_target_usable
    from .cost.targets import get_target
    from .errors import ConfigError

    for section in ("distill", "full_distill"):
        device = getattr(config, section).device
        if device and device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise ConfigError(f"device {device!r} asked for, but CUDA is not available here", file=config.source,
                                  key=f"{section}.device")
    problem = check_target_usable(get_target(config.target, config.targets_file))
    if problem:
        raise ConfigError(problem, file=config.source, key="target")


def search(experiment: str | Path | ExperimentConfig, *, out: str | Path | None = None, trials: int | None = None,
           storage: str | None = None, force: bool = False, progress: bool = True,
           worker: bool = False) -> SearchOutcome:
    """Run (or continue) an experiment's search and write its report.

    Builds what the trials need first (the demo teacher, data, the teacher-feature cache), then
    runs the Optuna study until it holds ``trials`` distinct architectures.

    Args:
        experiment: a YAML path or a loaded config.
        out: the run folder (default: the config's ``out_dir``); one of another experiment is
            refused unless ``force``.
        trials: distinct architectures wanted (default: ``search.trials``).
        storage: the study's storage URL (default: ``search.storage``, else ``study.db`` in the run folder).
        force: also start a new study when the recorded one was run with other settings.
        worker: join a shared study as one of several workers: needs a database ``storage`` and
            a cache built beforehand (``dime-nas cache``), which is opened read-only.

    Raises:
        ConfigError: bad config, a run folder or study of other settings, an unreachable storage.
        CacheError: (workers) no complete cache for this experiment.
    """
    from .errors import ConfigError
    from .pipeline import open_shared_cache, prepare_cache
    from .search.objective import TrialContext
    from .search.local_workers import LocalWorkers, TimingGate, threads_each, torch_threads
    from .search.report import write_report
    from .search.storage import open_storage
    from .search.study import run_search

    t0 = time.time()
    config = load(experiment)
    preflight(config)
    run = RunDir.of(config, out)
    if worker and not (storage or config.search.storage):
        raise ConfigError("a worker needs the study's shared storage: pass --storage URL (or set search.storage)")
    if storage or config.search.storage:  # an unreachable database fails now, before anything is made
        open_storage(storage or config.search.storage)
    url = run.storage_for(config, storage)
    run.claim(config, force)
    run.record(config, url)
    # workers share a cache built once; they never build one
    cache, text_cfg = open_shared_cache(config) if worker else prepare_cache(config, progress=progress)
    prepared = time.time() - t0
    ctx = TrialContext.for_experiment(config, cache, text_cfg, progress=progress)
    ctx.evaluator.prepare(ctx, build=not worker)  # e.g. a supernet trained (or loaded) before the first trial
    n = 1 if worker else config.search.local_workers
    if config.search.local_workers > 1:  # this process and its local workers share the machine's cores
        ctx.meter.timing_gate = TimingGate(run.path / "timing.lock")
    with LocalWorkers(config.source, url, run.path, n - 1, threads_each(n), trials=trials) as helpers, \
            torch_threads(threads_each(n) if n > 1 else None):
        result = run_search(config, ctx, run, url, trials=trials, force=force, progress=progress)
        if result.interrupted:
            helpers.interrupt()
    summary = write_report(result.study, run)
    return SearchOutcome(run=run, study=result.study, storage=url, already_done=result.already_done,
                         new_trials=result.new_trials, distinct=result.distinct, interrupted=result.interrupted,
                         capped=result.capped, train_steps=ctx.train_steps_run, prepare_seconds=prepared,
                         search_seconds=result.seconds, seconds=time.time() - t0, summary=summary)


def report(run_dir: str | Path | RunDir, *, budgets: Sequence[str | Budget] = (), top_k: int = 3
           ) -> dict[str, Any]:
    """(Re)write a run's report; ``budgets`` (e.g. ``"latency_ms <= 3"``) add selections.

    Returns the summary (counts, front, selected), also written to ``selected.json``.
    """
    from .metrics import Budget
    from .search.report import write_report
    from .search.study import load_run_study

    run = _run(run_dir)
    extra = [b if isinstance(b, Budget) else Budget.parse(b) for b in budgets]
    return write_report(load_run_study(run), run, extra_budgets=extra, top_k=top_k)


def distill_selected(run_dir: str | Path | RunDir, select: str = "knee", *, steps: int | None = None,
                     progress: bool = True, export: bool = True) -> list[dict[str, Any]]:
    """Fully distil the students ``select`` picks (``knee``, ``best``, ``budget``, ``top:K``,
    ``trial:N``), re-measure and export them, and add them to the report.

    Resumable: a pick distilled before continues from its checkpoint. Returns every full
    run of the folder (``distill_results.json``), this call's included. Under torchrun every
    rank trains, rank 0 alone measures and writes; the other ranks return an empty list.
    """
    from . import handoff
    from .distill.trainer import is_main_process

    run = _run(run_dir)
    preflight(run.load_config())
    results = handoff.distill_selected(run, select, steps=steps, progress=progress, export=export)
    if not is_main_process():
        return []
    report(run)
    return results


def export(checkpoint: str | Path, *, out: str | Path | None = None, onnx: bool = True,
           int8: bool = True) -> Exported:
    """Export a fully distilled student (``RUN_DIR/full/<key>`` or its ``checkpoint.pt``): open_clip
    checkpoint and config, ONNX towers (fp32, int8), model card and README; by default into
    ``<its folder>/export``. The card carries the full run's scores when the run recorded them."""
    import json

    import torch

    from .deliverable import export_student, run_card
    from .distill.trainer import StudentTowers
    from .pipeline import prepare_cache, teacher_spec
    from .student import StudentConfig
    from .teacher import load_teacher

    ckpt = Path(checkpoint)
    ckpt = ckpt / "checkpoint.pt" if ckpt.is_dir() else ckpt
    if not ckpt.is_file():
        raise FileNotFoundError(f"no checkpoint at {ckpt}")
    run = RunDir.enclosing(ckpt.parent)
    config = run.load_config()
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    student = StudentConfig.from_dict(state["config"])
    towers = StudentTowers(student)
    towers.load_state_dict(state["model"])
    teacher = load_teacher(teacher_spec(config.teacher), device="cpu")
    cache, _ = prepare_cache(config, teacher=teacher)
    results = json.loads(run.distill_results.read_text()) if run.distill_results.is_file() else []
    full_run = next((r for r in results if r["arch_key"] == student.arch_key
                     and r["steps"] == state["result"].steps), None)
    folder = Path(out) if out else ckpt.parent / "export"
    card = export_student(student, towers, folder, preprocess_cfg=cache.manifest["preprocess"], teacher=teacher,
                          onnx=onnx, int8=int8,
                          card={"checkpoint": str(ckpt), **run_card(config, cache, state["result"].steps, full_run)})
    return Exported(folder, card)


def find(experiment: str | Path | ExperimentConfig, budgets: Sequence[str | Budget], *, target: str | None = None,
         precision: str | None = None, out: str | Path | None = None, trials: int | None = None,
         progress: bool = True) -> FindOutcome:
    """The most accurate student that meets ``budgets`` on the target, verified as it ships.

    Runs or continues the search with ``budgets`` added to the experiment's, then distils,
    exports and verifies students along the front until one passes on the target (see
    ``dime_nas/find.py``); every stage resumes. Returns the outcome (also in ``find.json``).
    """
    from .find import find as run_find

    return run_find(experiment, list(budgets), target=target, precision=precision, out=out, trials=trials,
                    progress=progress)


def verify(export_dir: str | Path, *, target: str | None = None, budgets: Sequence[str | Budget] = (),
           precision: str | None = None, experiment: str | Path | ExperimentConfig | None = None,
           progress: bool = True) -> dict[str, Any]:
    """Measure an export on a target: latency per tower and precision with intervals, test-split
    accuracy through onnxruntime beside the checkpoint's, the precision to ship, budget verdicts.

    Defaults come from the run the export lies in (or ``experiment``): its target, its budgets
    (``budgets`` replace them) and ``deliverable`` settings. Writes ``verification.json`` and
    updates the model card and README (see ``dime_nas/verify.py``).
    """
    from .cost.targets import get_target
    from .metrics import Budget
    from .verify import verify_export

    config = load(experiment) if experiment is not None else RunDir.enclosing(export_dir).load_config()
    checked = [b if isinstance(b, Budget) else Budget.parse(b) for b in budgets] or config.budget_list
    return verify_export(export_dir, config, get_target(target or config.target, config.targets_file), checked,
                         precision=precision, progress=progress)


def build_cache(experiment: str | Path | ExperimentConfig, *, progress: bool = True) -> Any:
    """Build (or reuse) an experiment's teacher-feature cache; returns the opened FeatureCache."""
    from .pipeline import prepare_cache

    cache, _ = prepare_cache(load(experiment), progress=progress)
    return cache


def train_supernet(experiment: str | Path | ExperimentConfig, *, progress: bool = True) -> dict[str, Any]:
    """Train (or resume, or find stored) the weight-sharing supernet of an experiment's space, as a
    ``search.evaluator: supernet`` search does before its first trial; returns its ``summary.json``.

    Raises:
        ConfigError: the space has timm trunks or a continuous dimension (no supernet for it).
    """
    import json

    from .pipeline import prepare_cache
    from .space import SearchSpace
    from .supernet.store import load_or_train, supernet_dir

    config = load(experiment)
    space = SearchSpace.load(config.space)
    cache, _ = prepare_cache(config, progress=progress)
    load_or_train(config, space, cache, progress=progress)
    folder = supernet_dir(config, space)
    return {"folder": str(folder), **json.loads((folder / "summary.json").read_text())}


def fit_predictor(source: str | Path, target: str, *, out: str | Path | None = None, holdout: float = 0.3,
                  seed: int = 0) -> dict[str, Any]:
    """Fit a latency predictor on ``target``'s measured towers, from a MEASUREMENTS.jsonl file or
    a run folder, and save it (default: ``<source folder>/predictor-<target>.json``).

    Returns the fit's report (samples, cross-validation, held-out error, kind) and its ``path``.

    Raises:
        ValueError: too few measurements, a malformed file.
        FileNotFoundError: ``source`` is neither a file nor a run folder.
    """
    from .cost.predictor import fit_predictor as fit, load_measurements
    from .search.measurements import run_measurements

    source = Path(source)
    samples = load_measurements(source, target) if source.is_file() else run_measurements(source, target)
    predictor = fit(samples, target, holdout=holdout, seed=seed)
    path = predictor.save(out or (source if source.is_dir() else source.parent) / f"predictor-{target}.json")
    return {**predictor.report, "path": str(path)}


def model_cost(model: str) -> dict[str, Any]:
    """Params, MACs and FLOPs per tower of ``model`` (an open_clip model name, random init, or a
    StudentConfig JSON file): ``{"model": name, "towers": {tower: {params, gmacs, gflops, input_shape}}}``.

    Raises:
        ConfigError: an unknown model name or a malformed StudentConfig file.
    """
    from .cost.flops import model_cost as count

    name, towers = _towers(model)
    return {"model": name, **count(towers)}


def measure_latency(model: str, *, target: str | None = None, targets_file: str | Path | None = None,
                    towers: Sequence[str] | None = None, threads: int | None = None, batch: int | None = None,
                    runs: int | None = None, warmup: int | None = None, int8: bool = False,
                    torch_eager: bool = False) -> dict[str, Any]:
    """Export each tower of ``model`` to ONNX (parity-checked) and time it on a target.

    ``target`` names a shipped target or one in ``targets_file``; without it, this machine's
    onnxruntime with default settings. The other arguments override the target's fields.
    ``torch_eager`` also times the torch module, for comparison. Returns ``{"model", "target"
    (as measured), "total_median_ms", <tower>: its latency statistics}``.
    """
    import dataclasses
    import tempfile

    from .cost.latency import measure_target
    from .cost.local import torch_eager_latency
    from .cost.targets import Target

    name, built = _towers(model)
    base = _target(target, targets_file) if target else Target(name="cli", description="command-line options")
    overrides: dict[str, Any] = {"towers": tuple(towers) if towers else (base.towers if target else tuple(built))}
    for field, value in (("intra_op_threads", threads), ("batch_size", batch), ("runs", runs), ("warmup", warmup)):
        if value is not None:
            overrides[field] = value
    if int8:
        overrides["precision"] = "int8"
    chosen = dataclasses.replace(base, **overrides)
    with tempfile.TemporaryDirectory(prefix="dime_nas_latency_") as tmp:
        result = measure_target(built, chosen, tmp)
    out: dict[str, Any] = {"model": name, "target": chosen.to_dict(), "total_median_ms": result["total_median_ms"]}
    for tower, r in result["towers"].items():
        out[tower] = r["latency"]
        if r["export"]:
            out[tower]["onnx_parity_max_abs_diff"] = r["export"]["parity_max_abs_diff"]
            if r["export"].get("int8_cosine_mean") is not None:
                out[tower]["int8_cosine_mean"] = r["export"]["int8_cosine_mean"]
        if torch_eager:
            out[tower]["torch_eager"] = torch_eager_latency(built[tower], chosen.intra_op_threads, chosen.batch_size,
                                                            chosen.warmup, chosen.runs).to_dict()
    return out


def list_targets(extra_file: str | Path | None = None, *, ask_agents: bool = True) -> dict[str, dict[str, Any]]:
    """The latency targets (shipped, then ``extra_file``'s), each ``{"target": Target, "devices": [...]}``;
    with ``ask_agents``, a remote target's devices as its agents describe them (``{"url", "device"}``
    or ``{"url", "error"}``)."""
    from .cost.latency import backend_class
    from .cost.targets import load_targets

    targets = load_targets()
    if extra_file:
        targets.update(load_targets(extra_file))
    return {name: {"target": t, "devices": backend_class(t.backend)().devices(t) if ask_agents else []}
            for name, t in targets.items()}


def sample_space(space: str | Path, *, count: int = 0, grid: bool = False, seed: int = 0) -> tuple[Any, list[Any]]:
    """A search space (a shipped name or a YAML file) and students from it: its whole grid, or
    ``count`` drawn at random (seeded) as a search's random sampler draws them."""
    import itertools

    from .space import SearchSpace, resolve_space_path

    loaded = SearchSpace.load(resolve_space_path(str(space)))
    return loaded, loaded.grid() if grid else list(itertools.islice(loaded.draws(seed), count))


def train_demo_teacher(experiment: str | Path | ExperimentConfig | None = None, *, progress: bool = True) -> Path:
    """Train (or find cached) the ShapesWorld demo teacher, with an experiment's teacher settings
    or the default ones; returns its folder.

    Raises:
        ConfigError: the experiment does not use the ShapesWorld teacher.
    """
    from .config import ShapesTeacherConfig
    from .errors import ConfigError
    from .pipeline import user_cache_root
    from .shapes.teacher import ensure_shapes_teacher

    settings = ShapesTeacherConfig()
    if experiment is not None:
        config = load(experiment)
        if config.teacher.shapes is None:
            raise ConfigError(f"{experiment} does not use the ShapesWorld teacher", key="teacher.shapes")
        settings = config.teacher.shapes
    return ensure_shapes_teacher(settings, user_cache_root(), progress=progress)


def _towers(model: str) -> tuple[str, dict[str, Any]]:
    """A model name or StudentConfig JSON -> its towers; a name or file that is wrong is a user error."""
    from .cost.towers import resolve_model
    from .errors import ConfigError

    try:
        return resolve_model(model)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _target(name: str, extra_file: str | Path | None) -> Any:
    """A shipped target, or one from ``extra_file`` (which may redefine a shipped name)."""
    from .cost.targets import get_target, load_targets

    extra = load_targets(extra_file) if extra_file else {}
    return extra[name] if name in extra else get_target(name)


def _run(run_dir: str | Path | RunDir) -> RunDir:
    return run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
