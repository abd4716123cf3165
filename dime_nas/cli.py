"""The ``dime-nas`` command: a thin layer over the library's public functions.

An error the user can act on (a ``UserError``: bad input, a missing teacher or cache, an
agent that refuses; or a missing file) prints one line naming the problem and exits with
its code: 2, or 3 for a study's database lost for good; any other error, code 1; a second
Ctrl-C, 130 (docs/workers.md). ``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

EPILOG = "Every sub-command has --help. Docs: README.md."


# what the `search` extra installs (setup.cfg); a device install with only the agent lacks them
SEARCH_EXTRA_MODULES = frozenset({"torch", "torchvision", "open_clip", "timm", "optuna", "fvcore", "onnxscript",
                                  "scipy", "PIL", "tqdm", "webdataset", "safetensors", "pyarrow", "matplotlib",
                                  "plotly", "httpx", "sklearn"})


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _quiet_libraries()
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        if isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] in SEARCH_EXTRA_MODULES:
            command = args.func.__name__.removeprefix("_cmd_").replace("_", " ")
            print(f"dime-nas: error: `dime-nas {command}` needs the search tools, which this install lacks "
                  f"(no module named {exc.name!r}): pip install 'dime-nas[search]'", file=sys.stderr)
            return 2
        from .errors import UserError

        print(f"dime-nas: error: {exc}", file=sys.stderr)
        if isinstance(exc, UserError):
            return exc.exit_code
        if isinstance(exc, FileNotFoundError):
            return 2
        print("(run again with --debug for the traceback)", file=sys.stderr)
        return 1


def _quiet_libraries() -> None:
    """Silence library chatter that says nothing to a user (random-init notices, deprecations)."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
    warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
    warnings.filterwarnings("ignore", message=".*No pretrained weights loaded.*")

    class _NoRandomInitNotice(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "No pretrained weights loaded" not in record.getMessage()

    logging.getLogger().addFilter(_NoRandomInitNotice())
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_NoRandomInitNotice())


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dime-nas", description="Find small, fast CLIP-style students for a latency "
                                "budget: Optuna search + short DIME-FM distillation + measured cost.", epilog=EPILOG)
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(title="commands", metavar="COMMAND")
    _add_cost(sub)
    _add_latency(sub)
    _add_targets(sub)
    _add_agent(sub)
    _add_predictor(sub)
    _add_space(sub)
    _add_teacher(sub)
    _add_cache(sub)
    _add_supernet(sub)
    _add_search(sub)
    _add_worker(sub)
    _add_report(sub)
    _add_distill(sub)
    _add_find(sub)
    _add_verify(sub)
    _add_export(sub)
    return p


def _add_cost(sub: Any) -> None:
    """`dime-nas cost`."""
    c = sub.add_parser("cost", help="params, MACs and FLOPs per tower of a model",
                       description="Params, MACs and FLOPs (= 2 x MACs) per tower, per image/sentence (batch 1). "
                       "MODEL is an open_clip model name (random init) or a StudentConfig JSON file.")
    c.add_argument("model", metavar="MODEL")
    c.add_argument("--json", action="store_true", help="print exactly one JSON object")
    c.set_defaults(func=_cmd_cost)


def _add_latency(sub: Any) -> None:
    """`dime-nas latency`."""
    lat = sub.add_parser("latency", help="ONNX Runtime (or torch) latency per tower",
                         description="Export each tower to ONNX (parity-checked) and time it with onnxruntime.")
    lat.add_argument("model", metavar="MODEL", help="open_clip model name or StudentConfig JSON")
    lat.add_argument("--target", default=None, help="a named target (see `dime-nas targets`); "
                     "the options below override its fields")
    lat.add_argument("--targets-file", default=None, help="YAML with more targets (e.g. your remote boards)")
    lat.add_argument("--threads", type=int, default=None, help="intra-op threads")
    lat.add_argument("--batch", type=int, default=None, help="batch size")
    lat.add_argument("--int8", action="store_true", help="time the int8 (dynamic quantisation) variant")
    lat.add_argument("--towers", default=None, help="comma-separated: image,text (default: all the model has)")
    lat.add_argument("--runs", type=int, default=None, help="timed runs")
    lat.add_argument("--warmup", type=int, default=None, help="untimed warm-up runs")
    lat.add_argument("--torch", action="store_true", help="also time torch eager, for comparison")
    lat.add_argument("--json", action="store_true", help="print exactly one JSON object")
    lat.set_defaults(func=_cmd_latency)


def _add_targets(sub: Any) -> None:
    """`dime-nas targets`."""
    t = sub.add_parser("targets", help="list latency targets", description="List the latency targets; for remote "
                       "targets, ask each agent for its device description.")
    t.add_argument("--file", default=None, help="extra targets YAML")
    t.add_argument("--offline", action="store_true", help="do not contact remote agents")
    t.set_defaults(func=_cmd_targets)


def _add_agent(sub: Any) -> None:
    """`dime-nas agent`."""
    ag = sub.add_parser("agent", help="serve latency measurements on this device (runs on the target)",
                        description="The measurement agent: a small HTTP service that stores ONNX models by hash "
                        "and times them with onnxruntime. Needs only `pip install 'dime-nas[agent]'` (no torch). "
                        "Every request must carry `Authorization: Bearer TOKEN`.")
    from .agent.server import add_arguments as add_agent_arguments  # standard library only

    add_agent_arguments(ag)
    ag.set_defaults(func=_cmd_agent)


def _add_predictor(sub: Any) -> None:
    """`dime-nas predictor`."""
    pr = sub.add_parser("predictor", help="latency predictor from measured towers", description="Latency predictor.")
    psub = pr.add_subparsers(title="predictor commands", metavar="COMMAND")
    pf = psub.add_parser("fit", help="fit a latency predictor on a target's measurements",
                         description="Learn latency from towers already measured on one target (a run directory "
                         "or a MEASUREMENTS.jsonl file); compares gradient boosting with a log-linear model (least "
                         "squares and Huber loss) by cross-validation, reports the held-out error and saves the best.")
    pf.add_argument("source", metavar="RUN_DIR|MEASUREMENTS.jsonl")
    pf.add_argument("--target", required=True, help="the target whose measurements to learn from")
    pf.add_argument("--out", default=None, help="file to write (default: <source folder>/predictor-<target>.json)")
    pf.add_argument("--holdout", type=float, default=0.3, help="share held out for the error report (default 0.3)")
    pf.add_argument("--seed", type=int, default=0)
    pf.set_defaults(func=_cmd_predictor_fit)


def _add_space(sub: Any) -> None:
    """`dime-nas space`."""
    s = sub.add_parser("space", help="validate a search space and sample from it",
                       description="Load SPACE (a YAML file or a shipped name: tiny, edge, dime-fm-b32), "
                       "print its size and N sampled configs with their architecture keys.")
    s.add_argument("space", metavar="SPACE")
    s.add_argument("--sample", type=int, default=5, metavar="N", help="configs to sample (default 5)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--grid", action="store_true", help="print every configuration (small discrete spaces)")
    s.add_argument("--json", action="store_true", help="one JSON object per line")
    s.set_defaults(func=_cmd_space)


def _add_teacher(sub: Any) -> None:
    """`dime-nas teacher`."""
    te = sub.add_parser("teacher", help="teacher utilities", description="Teacher utilities.")
    tsub = te.add_subparsers(title="teacher commands", metavar="COMMAND")
    ts = tsub.add_parser("train-shapes", help="build the ShapesWorld demo teacher (cached)",
                         description="Train the built-in demo teacher on paired ShapesWorld data, once; later calls "
                         "reuse it from the user cache ($DIME_NAS_CACHE or ~/.cache/dime_nas).")
    ts.add_argument("--experiment", default=None, help="take the teacher settings from this experiment's "
                    "teacher.shapes section (default: built-in defaults)")
    ts.set_defaults(func=_cmd_train_shapes)


def _add_cache(sub: Any) -> None:
    """`dime-nas cache`."""
    ca = sub.add_parser("cache", help="build the teacher-feature cache of an experiment",
                        description="Embed every image and sentence (and the evaluation data) with the teacher once; "
                        "resumes an interrupted build, rebuilds when teacher or corpora changed.")
    ca.add_argument("experiment", metavar="EXPERIMENT.yaml")
    ca.set_defaults(func=_cmd_cache)


def _add_supernet(sub: Any) -> None:
    """`dime-nas supernet`."""
    sn = sub.add_parser("supernet", help="train the weight-sharing supernet of an experiment (search.evaluator: "
                        "supernet)", description="Train the experiment's supernet once from its feature cache (the "
                        "search does this before its first trial); resumes after a kill, reuses a stored one. "
                        "Prints where it is kept and what its largest and smallest students reach.")
    sn.add_argument("experiment", metavar="EXPERIMENT.yaml")
    sn.add_argument("--quiet", action="store_true", help="no progress bars")
    sn.set_defaults(func=_cmd_supernet)


def _add_search(sub: Any) -> None:
    """`dime-nas search`."""
    se = sub.add_parser("search", help="run (or continue) the architecture search",
                        description="Run the Optuna search of an experiment; rerunning continues the same study. "
                        "Ctrl-C stops after the current trial. Writes the report at the end.")
    se.add_argument("experiment", metavar="EXPERIMENT.yaml")
    se.add_argument("--out", default=None, help="run directory (default: the config's out_dir)")
    se.add_argument("--trials", type=int, default=None, help="total finished trials wanted (overrides the config)")
    se.add_argument("--storage", default=None, help="Optuna storage URL (default: sqlite in the run directory)")
    se.add_argument("--force", action="store_true",
                    help="use a run directory that belongs to another experiment, or start a new study when the "
                         "settings that change a trial's result differ from the study's (the old one is kept)")
    se.add_argument("--quiet", action="store_true", help="no progress bars")
    se.set_defaults(func=_cmd_search, worker=False)


def _add_worker(sub: Any) -> None:
    """`dime-nas worker`."""
    w = sub.add_parser("worker", help="join a shared study and run its trials (one per GPU or machine)",
                       description="Join the study of an experiment on a shared storage (PostgreSQL) and run trials "
                       "until the study holds the requested number; start as many as you have GPUs or machines. "
                       "Opens the teacher-feature cache read-only (build it first with `dime-nas cache`). "
                       "Ctrl-C finishes the current trial and leaves.")
    w.add_argument("experiment", metavar="EXPERIMENT.yaml")
    w.add_argument("--storage", default=None, help="the study's storage URL, e.g. postgresql://user:pw@host/db "
                   "(default: the config's search.storage)")
    w.add_argument("--trials", type=int, default=None, help="distinct architectures the study should hold "
                   "(overrides the config)")
    w.add_argument("--out", default=None, help="this machine's run directory (default: the config's out_dir)")
    w.add_argument("--force", action="store_true", help="join even though the study was recorded with other "
                   "settings: starts a new study")
    w.add_argument("--quiet", action="store_true", help="no progress bars")
    w.set_defaults(func=_cmd_search, worker=True)


def _add_report(sub: Any) -> None:
    """`dime-nas report`."""
    r = sub.add_parser("report", help="write the Pareto report of a run",
                       description="Write trials.csv, pareto.csv, selected.json, report.md, plots and report.html.")
    r.add_argument("run_dir", metavar="RUN_DIR")
    r.add_argument("--budget", action="append", default=[], help="an extra budget for the selection, e.g. "
                   "'latency_ms <= 3' (repeatable)")
    r.add_argument("--top", type=int, default=3, help="K students spread along the front (default 3)")
    r.set_defaults(func=_cmd_report)


def _add_distill(sub: Any) -> None:
    """`dime-nas distill`."""
    d = sub.add_parser("distill", help="full distillation of selected students",
                       description="Full DIME-FM runs (resumable) of the students a search selected, re-measured and "
                       "exported; results are added to the report. Works under torchrun for several GPUs.")
    d.add_argument("run_dir", metavar="RUN_DIR")
    d.add_argument("--select", default="knee", help="knee | best | budget | top:K | trial:N (default knee)")
    d.add_argument("--steps", type=int, default=None, help="override full_distill.steps")
    d.add_argument("--no-export", action="store_true", help="skip the export")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.set_defaults(func=_cmd_distill)


def _add_find(sub: Any) -> None:
    """`dime-nas find`."""
    f = sub.add_parser("find", help="budget -> the most accurate student under it, distilled, exported, verified",
                       description="Run or continue the search with the budget(s), then fully distil, export and "
                       "verify students along the front (most accurate first) until one meets every budget on the "
                       "target as shipped. Every stage resumes when run again. Reference: docs/find.md.")
    f.add_argument("experiment", metavar="EXPERIMENT.yaml")
    f.add_argument("--budget", action="append", required=True, help="e.g. 'latency_ms <= 5' (repeatable; the "
                   "experiment's own budgets apply too)")
    f.add_argument("--target", default=None, help="target to search and verify on (default: the experiment's)")
    f.add_argument("--precision", choices=("fp32", "int8", "auto"), default=None,
                   help="what to ship (default: deliverable.precision, auto: int8 when within the accuracy "
                   "tolerance and faster)")
    f.add_argument("--out", default=None, help="run directory (default: <out_dir>-find-<budget>)")
    f.add_argument("--trials", type=int, default=None, help="distinct architectures to search (default: the config)")
    f.add_argument("--quiet", action="store_true", help="no progress")
    f.set_defaults(func=_cmd_find)


def _add_verify(sub: Any) -> None:
    """`dime-nas verify`."""
    v = sub.add_parser("verify", help="measure an exported student on a target as it ships",
                       description="Time each exported ONNX tower at each precision on the target (with a bootstrap "
                       "interval of the median), score the ONNX files on the test split through onnxruntime beside "
                       "the checkpoint, choose the precision to ship, check the budgets. Writes verification.json, "
                       "updates model_card.json and README.md. Exit code 1 when a budget is missed.")
    v.add_argument("export_dir", metavar="EXPORT_DIR")
    v.add_argument("--target", default=None, help="default: the run's target")
    v.add_argument("--budget", action="append", default=[], help="budget to check (repeatable; default: the run's)")
    v.add_argument("--precision", choices=("fp32", "int8", "auto"), default=None)
    v.add_argument("--experiment", default=None, help="the experiment, for an export outside its run directory")
    v.add_argument("--quiet", action="store_true", help="no progress")
    v.set_defaults(func=_cmd_verify)


def _add_export(sub: Any) -> None:
    """`dime-nas export`."""
    e = sub.add_parser("export", help="export a fully distilled student",
                       description="Write an open_clip checkpoint + model config, ONNX towers (fp32, int8) and a "
                       "model card for a student distilled by `dime-nas distill`.")
    e.add_argument("checkpoint", metavar="CHECKPOINT", help="RUN_DIR/full/<arch_key> (or its checkpoint.pt)")
    e.add_argument("--out", default=None, help="output folder (default: <checkpoint folder>/export)")
    e.add_argument("--no-onnx", action="store_true")
    e.add_argument("--no-int8", action="store_true")
    e.set_defaults(func=_cmd_export)


# ---- commands --------------------------------------------------------------------------------

def _cmd_cost(args) -> int:
    from .api import model_cost

    report = model_cost(args.model)
    if args.json:
        print(json.dumps({t: {"params": c["params"], "gmacs": c["gmacs"], "gflops": c["gflops"]}
                          for t, c in report["towers"].items()}))
        return 0
    print(f"{report['model']}: per sample (batch 1); FLOPs = 2 x MACs")
    for t, c in report["towers"].items():
        print(f"  {t:5s} params {c['params'] / 1e6:9.3f} M   {c['gmacs']:9.4f} GMACs   {c['gflops']:9.4f} GFLOPs   "
              f"input {c['input_shape']}")
    return 0


def _cmd_latency(args) -> int:
    from .api import measure_latency

    out = measure_latency(args.model, target=args.target, targets_file=args.targets_file,
                          towers=args.towers.split(",") if args.towers else None, threads=args.threads,
                          batch=args.batch, runs=args.runs, warmup=args.warmup, int8=args.int8,
                          torch_eager=args.torch)
    if args.json:
        print(json.dumps(out, default=str))
        return 0
    t = out["target"]
    print(f"{out['model']} on {t['name']}: {t['precision']}, batch {t['batch_size']}, "
          f"{t['intra_op_threads']} thread(s), {t['runs']} timed runs after {t['warmup']} warm-up")
    for tower in t["towers"]:
        m = out[tower]
        line = (f"  {tower:5s} median {m['median_ms']:8.3f} ms  p90 {m['p90_ms']:8.3f}  p99 {m['p99_ms']:8.3f}  "
                f"cv {m['cv']:.3f}  providers {','.join(m['providers'])}")
        if "torch_eager" in m:
            e = m["torch_eager"]["median_ms"]
            line += f"  | torch eager {e:.3f} ms (onnx {e / m['median_ms']:.2f}x faster)"
        print(line)
    print(f"  total (sum of medians) {out['total_median_ms']:.3f} ms")
    return 0


def _cmd_targets(args) -> int:
    from .api import list_targets

    for name, entry in list_targets(args.file, ask_agents=not args.offline).items():
        t = entry["target"]
        print(f"{name:16s} {t.backend:11s} {t.precision:4s} threads={t.intra_op_threads} batch={t.batch_size} "
              f"towers={','.join(t.towers)}\n{'':16s} {t.description}")
        for agent in entry["devices"]:
            d = agent.get("device")
            if d is None:
                print(f"{'':16s} agent {agent['url']}: {agent['error']}")
                continue
            labels = ", ".join(f"{k}={v}" for k, v in d.get("labels", {}).items())
            memory = f"{d['memory_bytes'] / 1024**3:.1f} GB" if d.get("memory_bytes") else "? GB"
            print(f"{'':16s} agent {agent['url']}: {d.get('processor')}, {d.get('cpu_count')} cores, {memory}, "
                  f"{d.get('platform')}, onnxruntime {d.get('onnxruntime')} "
                  f"({', '.join(d.get('providers_available', []))})" + (f" [{labels}]" if labels else ""))
    return 0


def _cmd_agent(args) -> int:
    from .agent.server import serve_from_args  # torch-free: the device may not have it

    serve_from_args(args)
    return 0


def _cmd_predictor_fit(args) -> int:
    from . import api
    from .errors import ConfigError

    try:
        report = api.fit_predictor(args.source, args.target, out=args.out, holdout=args.holdout, seed=args.seed)
    except ValueError as exc:  # too few measurements, a malformed file: the user's input
        raise ConfigError(str(exc)) from None
    h = report["held_out"]
    print(f"{report['target']}: {report['samples']} measured towers; cross-validated MAPE "
          + ", ".join(f"{k} {v['mape']:.1%}" for k, v in report["cross_validation"].items())
          + f" -> {report['kind']}")
    print(f"held-out ({h['n']} towers): MAPE {h['mape']:.1%}, within +-10%: {h['within_10']:.0%}")
    print(f"saved: {report['path']}")
    return 0


def _cmd_space(args) -> int:
    from .api import sample_space

    space, configs = sample_space(args.space, count=args.sample, grid=args.grid, seed=args.seed)
    if not args.json:
        size = space.size()
        print(f"{space.name}: {space.source}\n  {space.description}\n  size before constraints: "
              f"{'continuous' if size is None else size}; constraints: {len(space.constraints)}")
    for c in configs:
        print(json.dumps({"arch_key": c.arch_key, "config": c.to_dict()}) if args.json
              else f"{c.arch_key}  {c.describe()}")
    return 0


def _cmd_train_shapes(args) -> int:
    from .api import train_demo_teacher

    print(f"demo teacher: {train_demo_teacher(args.experiment)}")
    return 0


def _cmd_cache(args) -> int:
    from .api import build_cache

    s = build_cache(args.experiment).summary()
    print(json.dumps({k: s[k] for k in ("root", "images", "sentences", "images_skipped", "sentences_dropped",
                                        "eval_tasks", "seconds")}, indent=1))
    return 0


def _cmd_supernet(args) -> int:
    from .api import train_supernet

    s = train_supernet(args.experiment, progress=not args.quiet)
    print(json.dumps({k: s[k] for k in ("folder", "steps", "train_s", "seconds_per_step", "reached")}, indent=1))
    return 0


def _cmd_search(args) -> int:
    from .api import search

    o = search(args.experiment, out=args.out, trials=args.trials, storage=args.storage, force=args.force,
               progress=not args.quiet, worker=args.worker)
    c = o.summary["counts"]
    print(f"\n{'stopped early' if o.interrupted else 'done'}: {o.new_trials} new trial(s), "
          f"{o.already_done} already done before this run; {c['distinct']} distinct architectures: "
          f"{c.get('ok', 0)} feasible, {c['rejected_before_training']} rejected before training, "
          f"{c.get('failed', 0)} failed; {c['reused']} repeats reused; {c['near_budget']} near-budget decisions")
    print(f"time: {o.seconds:.0f} s (teacher, data and cache {o.prepare_seconds:.0f} s, "
          f"search {o.search_seconds:.0f} s)")
    for p in o.summary["selected"]:
        m = p["metrics"]
        print(f"  selected trial {p['trial']} {p['arch_key']} {p['describe']}: "
              + ", ".join(f"{k} {m[k]:.4g}" for k in ("accuracy", "latency_ms", "params_m") if k in m)
              + f"  ({'; '.join(p['why'])})")
    print(f"report: {o.run.report_md}")
    return 0


def _cmd_report(args) -> int:
    from .api import report
    from .run_dir import RunDir

    summary = report(args.run_dir, budgets=args.budget, top_k=args.top)
    print(json.dumps({k: summary[k] for k in ("counts", "front", "selected") if k in summary}, indent=1,
                     default=str)[:4000])
    print(f"report: {RunDir(args.run_dir).report_md}")
    return 0


def _cmd_distill(args) -> int:
    from .api import distill_selected

    results = distill_selected(args.run_dir, args.select, steps=args.steps, progress=not args.quiet,
                               export=not args.no_export)
    for r in results:
        print(f"trial {r['trial']} {r['arch_key']} {r['describe']}: {r['steps']} steps; proxy accuracy "
              f"{r['proxy'].get('accuracy')}, full accuracy {r['full'].get('accuracy')}; "
              f"latency {r['full'].get('latency_ms'):.3f} ms" + (f"; exported to {r['export']}" if 'export' in r else ""))
    return 0


def _cmd_find(args) -> int:
    from .api import find

    o = find(args.experiment, args.budget, target=args.target, precision=args.precision, out=args.out,
             trials=args.trials, progress=not args.quiet)
    s = o.seconds
    for a in o.attempts:
        print(f"  tried trial {a['trial']} {a['arch_key']}: {'passes' if a['passes'] else 'misses'} "
              f"({'; '.join(b['text'] for b in a['budgets'])})")
    print(f"\n{'found' if o.chosen else 'not found'}: {o.message}")
    print(f"time: {s['total']:.0f} s (teacher, data and cache {s['prepare']:.0f} s, search {s['search']:.0f} s, "
          f"distillation {s['distill']:.0f} s, export {s['export']:.0f} s, verification {s['verify']:.0f} s)")
    if o.chosen:
        print(f"read: {o.chosen['export']}/README.md; record: {o.run.path / 'find.json'}")
    return 0 if o.chosen else 1


def _cmd_verify(args) -> int:
    from .api import verify

    v = verify(args.export_dir, target=args.target, budgets=args.budget, precision=args.precision,
               experiment=args.experiment, progress=not args.quiet)
    metric, fp32 = v["metric"], v["variants"]["fp32"][v["metric"]]
    print(f"{v['export']} on {v['target']['name']}: test {metric} (onnxruntime) and latency of the counted towers "
          f"({', '.join(v['target']['towers'])}), ms median [95% interval]")
    for name, var in v["variants"].items():
        lo, hi = var["total_interval_ms"]
        r = var["time_vs_fp32"]
        print(f"  {name:20s} {var['precision']:4s}  {metric} {var[metric]:.3f} ({(var[metric] - fp32) * 100:+.1f})  "
              f"latency {var['total_median_ms']:.4g} [{lo:.4g}-{hi:.4g}], {r['ratio']:.2f}x fp32's time "
              f"[{r['interval'][0]:.2f}-{r['interval'][1]:.2f}]")
    print(f"  {'torch checkpoint':20s} fp32  {metric} {v['torch'][metric]:.3f}")
    print(f"shipped: {v['shipped']['variant']}: {v['shipped']['reason']}")
    for b in v["budgets"]:
        print(f"budget {'met' if b['passes'] else 'MISSED'}: {b['text']}")
    print(f"wrote {v['export']}/verification.json, model_card.json, README.md")
    return 0 if v["passes"] else 1


def _cmd_export(args) -> int:
    from .api import export

    done = export(args.checkpoint, out=args.out, onnx=not args.no_onnx, int8=not args.no_int8)
    print(json.dumps({"out": str(done.out), "files": done.card["files"], "cost": done.card["cost"]}, indent=1,
                     default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
