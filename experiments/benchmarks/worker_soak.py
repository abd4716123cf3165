"""Soak test of the shared study: many workers on one PostgreSQL study, some SIGKILLed, repeated.

Each run, on a fresh database of one throw-away PostgreSQL server (as the tests start one):
`dime-nas search EXPERIMENT --storage URL --trials 2`, then workers `dime-nas worker EXPERIMENT
--storage URL --trials 8`, all with one run folder (`--out`), as README's commands on one machine
give them, and `OMP_NUM_THREADS=1` each (README: workers on one CPU machine share its cores):

- ``one_kill``: 4 workers; one is SIGKILLed 25 s after they start.
- ``two_kills``: 4 workers; two are SIGKILLed at random moments: at one, a worker drawn at random;
  at the other (which one is drawn), the first worker seen holding the claim lock from then on (it
  is frozen with SIGSTOP, the lock checked again in ``pg_locks``, then killed).

Workers run with ``--debug``, so an unexpected error leaves its traceback in the worker's log.
Every log and exit code is kept under ``--scratch``; each finished run is appended to
``runs.jsonl`` there, so a killed benchmark resumes where it stopped. Writes
experiments/results/worker_soak.{json,md}. Run it in the background:

    nice -n 10 python experiments/benchmarks/worker_soak.py [--runs 30] > soak.log 2>&1 &

Two at once (each run waits out a killed worker's grace period, leaving the cores idle): a
second instance takes the upper indices into its own folder, and the first, once it reaches
them, is stopped and rerun with ``--merge`` to write the summary of both:

    python experiments/benchmarks/worker_soak.py --from-index 17 --scratch runs/worker_soak_b \
        --results runs/worker_soak_b/worker_soak > soak_b.log 2>&1 &
    python experiments/benchmarks/worker_soak.py --runs 17 --merge runs/worker_soak_b
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from common import RESULTS, ROOT, read_records, relative  # common puts the checkout on sys.path

sys.path.insert(0, str(ROOT / "tests"))
from pg_server import PostgresServer  # noqa: E402
from workers import machine_note  # noqa: E402  (the CPU, its cores and the load at the start)

VARIANTS = ("one_kill", "two_kills")
WORKERS = 4
SEARCH_TRIALS, WORKER_TRIALS = 2, 8
KILL_AT_S = 25.0  # one_kill: when the victim is killed, after the workers start
RANDOM_KILL_S = (5.0, 60.0)  # two_kills: the window of the random moments (workers take 80-300 s)
RUN_TIMEOUT_S = 3600.0  # a run whose survivors are not done by then is recorded as timed out


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "dime_nas.cli", "--debug", *args]


LIVE: list[subprocess.Popen] = []  # this run's processes, killed if the benchmark stops mid-run


def _launch(args: list[str], log: Path, name: str) -> subprocess.Popen:
    # PGAPPNAME names the worker's database sessions, so pg_locks tells which worker holds the claim lock
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PGAPPNAME": name}
    with open(log, "w") as f:
        LIVE.append(subprocess.Popen(args, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT,
                                     start_new_session=True))
    return LIVE[-1]


def _lock_holders(admin: Any) -> set[str]:
    """Application names of the sessions holding an advisory lock (the claim lock)."""
    rows = admin.execute("SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                         "WHERE l.locktype = 'advisory' AND l.granted").fetchall()
    return {r[0] for r in rows}


def _kill_one_holding_lock(procs: dict[str, subprocess.Popen], admin: Any, deadline: float) -> str | None:
    """SIGKILL whichever of ``procs`` next holds the claim lock: frozen (SIGSTOP), the lock checked
    again, then killed. The worker's name, or None when none held it before they all left."""
    while time.time() < deadline and any(p.poll() is None for p in procs.values()):
        holder = next((n for n in _lock_holders(admin) if n in procs and procs[n].poll() is None), None)
        if holder is not None:
            os.kill(procs[holder].pid, signal.SIGSTOP)
            if holder in _lock_holders(admin):
                os.kill(procs[holder].pid, signal.SIGKILL)
                return holder
            os.kill(procs[holder].pid, signal.SIGCONT)
        time.sleep(0.02)
    return None


def cause_of(log: Path) -> str:
    """The line that says why a process stopped: its traceback's last line, else its error line."""
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")]
    if starts:
        tail = lines[starts[-1] + 1:]
        exc = next((line for line in tail if line and not line.startswith((" ", "\t"))), "")
        return re.sub(r"0x[0-9a-f]+", "0x…", exc.strip())
    said = [line for line in lines if line.startswith("dime-nas: error:")]
    return said[-1] if said else (lines[-1] if lines else "(empty log)")


def study_outcome(url: str) -> dict[str, Any]:
    """What the study holds: trials per state, distinct architectures, ones trained twice, ones left running."""
    import optuna

    from dime_nas.search.record import TrialRecord
    from dime_nas.search.storage import normalise_url
    from dime_nas.search.study import trial_counts

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="demo", storage=normalise_url(url))
    trials = study.get_trials(deepcopy=False)
    trained = Counter(TrialRecord.from_trial(t).arch_key for t in trials
                      if t.state == optuna.trial.TrialState.COMPLETE and "reused_from" not in t.user_attrs)
    return {"trials": dict(Counter(t.state.name for t in trials)), "distinct": trial_counts(study)[0],
            "trained_twice": sorted(k for k, n in trained.items() if n > 1),
            "left_running": sum(t.state == optuna.trial.TrialState.RUNNING for t in trials),
            "retried": sum(TrialRecord.from_trial(t).retry_of is not None for t in trials)}


def run_once(server: PostgresServer, experiment: Path, variant: str, index: int, scratch: Path) -> dict[str, Any]:
    """One run of ``variant``: a fresh database, the search, the workers, the kills; what the study holds."""
    import psycopg

    name = f"soak_{variant}_{index:02d}"
    folder = scratch / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    with psycopg.connect(server.url(), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    url = server.create_database(name)
    out = folder / "run"
    rng = random.Random(f"{variant}:{index}")
    t0 = time.time()
    search = _launch(_cli("search", str(experiment), "--storage", url, "--trials", str(SEARCH_TRIALS), "--out",
                          str(out), "--quiet"), folder / "search.log", "search")
    search_exit = search.wait(timeout=RUN_TIMEOUT_S)
    names = [f"worker-{k}" for k in range(1, WORKERS + 1)]
    procs = {n: _launch(_cli("worker", str(experiment), "--storage", url, "--trials", str(WORKER_TRIALS), "--out",
                             str(out), "--quiet"), folder / f"{n}.log", n) for n in names}
    started = time.time()
    kills: list[dict[str, Any]] = []

    def kill(at: float, holding_lock: bool, victim: str | None = None) -> None:
        """At ``at`` s: SIGKILL ``victim`` (None: a live worker drawn at random), or, holding_lock,
        the first live worker seen holding the claim lock from then on."""
        time.sleep(max(0.0, started + at - time.time()))
        alive = {n: p for n, p in procs.items() if p.poll() is None and n not in {k["worker"] for k in kills}}
        if holding_lock:
            with psycopg.connect(server.url(), autocommit=True) as admin:
                victim = _kill_one_holding_lock(alive, admin, deadline=time.time() + 600)
        else:
            victim = victim or (rng.choice(sorted(alive)) if alive else None)
            if victim in alive:
                alive[victim].send_signal(signal.SIGKILL)
            else:
                victim = None
        kills.append({"worker": victim, "planned_s": round(at, 1), "at_s": round(time.time() - started, 1),
                      "holding_claim_lock": holding_lock, "killed": victim is not None})

    if variant == "one_kill":
        kill(KILL_AT_S, holding_lock=False, victim=names[-1])
    else:  # two moments; which of them waits for a lock holder is drawn too
        moments = sorted(rng.uniform(*RANDOM_KILL_S) for _ in range(2))
        locked = rng.randrange(2)
        for i, at in enumerate(moments):
            kill(at, holding_lock=i == locked)
    killed = {k["worker"] for k in kills if k["killed"]}
    exit_codes: dict[str, Any] = {}
    for n, p in procs.items():
        try:
            code: Any = p.wait(timeout=max(1.0, t0 + RUN_TIMEOUT_S - time.time()))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            code = "timeout"
        if n not in killed:
            exit_codes[n] = code
    wall = time.time() - t0
    causes = [{"worker": n, "exit_code": c, "cause": cause_of(folder / f"{n}.log"),
               "log": relative(folder / f"{n}.log")} for n, c in exit_codes.items() if c != 0]
    if search_exit != 0:
        causes.append({"worker": "search", "exit_code": search_exit, "cause": cause_of(folder / "search.log"),
                       "log": relative(folder / "search.log")})
    outcome = study_outcome(url)
    return {"variant": variant, "run": index, "search_exit": search_exit, "exit_codes": exit_codes, "kills": kills,
            "causes": causes, **outcome, "wall_s": round(wall, 1), "load_1min": round(os.getloadavg()[0], 2),
            "clean": is_clean(search_exit, exit_codes, outcome)}


def is_clean(search_exit: int, exit_codes: dict[str, Any], outcome: dict[str, Any]) -> bool:
    """Every surviving process exited 0, the study holds the distinct architectures asked for,
    none was trained twice and none is left running."""
    return (search_exit == 0 and all(c == 0 for c in exit_codes.values()) and outcome["distinct"] == WORKER_TRIALS
            and not outcome["trained_twice"] and outcome["left_running"] == 0)


def summarise(runs: list[dict[str, Any]], machine: str) -> tuple[dict[str, Any], str]:
    """The JSON and Markdown results of all runs so far."""
    import statistics

    by_variant: dict[str, Any] = {}
    lines = ["# Worker soak: many workers on one PostgreSQL study, some SIGKILLed", "",
             "`python experiments/benchmarks/worker_soak.py` (its docstring gives the scenario): per run a fresh "
             f"database, `dime-nas search experiments/demo.yaml --trials {SEARCH_TRIALS}`, then {WORKERS} "
             f"`dime-nas worker ... --trials {WORKER_TRIALS}` sharing one run folder, one torch thread each. "
             f"`one_kill`: one worker SIGKILLed {KILL_AT_S:.0f} s after the workers start. `two_kills`: two SIGKILLed "
             f"at random moments in {RANDOM_KILL_S[0]:.0f}-{RANDOM_KILL_S[1]:.0f} s, one of them the first worker "
             f"seen holding the claim lock from its moment on. Workers run with `--debug` (a crash leaves its "
             f"traceback in the log). {machine}.", "",
             "Clean: every surviving process (the search and the workers not killed) exits 0, the study holds "
             f"{WORKER_TRIALS} distinct architectures, none trained twice, none left running.", "",
             "| variant | runs | clean | survivors' exits by code | distinct (min-max) | trained twice | left running "
             "| trials per state (sum) | retried trials (sum) | wall s per run (median, min-max) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for variant in VARIANTS:
        rs = [r for r in runs if r["variant"] == variant]
        if not rs:
            continue
        codes = Counter(str(c) for r in rs for c in [r["search_exit"], *r["exit_codes"].values()])
        states: Counter = Counter()
        for r in rs:
            states.update(r["trials"])
        walls = [r["wall_s"] for r in rs]
        by_variant[variant] = {"runs": len(rs), "clean": sum(r["clean"] for r in rs), "exits_by_code": dict(codes),
                               "trials_by_state": dict(states), "wall_s_median": statistics.median(walls)}
        lines.append(f"| {variant} | {len(rs)} | **{by_variant[variant]['clean']} of {len(rs)}** "
                     f"| {', '.join(f'{c}: {n}' for c, n in sorted(codes.items()))} "
                     f"| {min(r['distinct'] for r in rs)}-{max(r['distinct'] for r in rs)} "
                     f"| {sum(len(r['trained_twice']) for r in rs)} | {sum(r['left_running'] for r in rs)} "
                     f"| {', '.join(f'{s} {n}' for s, n in sorted(states.items()))} "
                     f"| {sum(r['retried'] for r in rs)} "
                     f"| {statistics.median(walls):.0f} ({min(walls):.0f}-{max(walls):.0f}) |")
    causes = Counter((c["exit_code"], c["cause"]) for r in runs for c in r["causes"])
    lines += ["", "## Causes of a non-zero exit in these runs", ""]
    if causes:
        lines += ["| exit code | cause (the traceback's last line) | times | first log |", "|---|---|---|---|"]
        for (code, cause), n in causes.most_common():
            log = next(c["log"] for r in runs for c in r["causes"] if (c["exit_code"], c["cause"]) == (code, cause))
            lines.append(f"| {code} | `{cause}` | {n} | {log} |")
    else:
        lines.append("None.")
    kills = [k for r in runs for k in r["kills"]]
    lines += ["", f"Kills: {sum(k['killed'] for k in kills)} of {len(kills)} done "
              f"({sum(k['killed'] and k['holding_claim_lock'] for k in kills)} while holding the claim lock)."]
    data = {"machine": machine, "scenario": {"workers": WORKERS, "search_trials": SEARCH_TRIALS,
                                             "worker_trials": WORKER_TRIALS, "kill_at_s": KILL_AT_S,
                                             "random_kill_s": list(RANDOM_KILL_S)},
            "summary": by_variant, "runs": runs}
    return data, "\n".join(lines) + "\n"


def _finished_runs(scratch: Path) -> list[dict[str, Any]]:
    """The runs recorded in ``scratch/runs.jsonl``, each tagged with the folder that holds its logs."""
    return [{**r, "scratch": relative(scratch)} for r in read_records(scratch / "runs.jsonl")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=30, help="runs of each variant (default 30)")
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    ap.add_argument("--experiment", default=str(ROOT / "experiments" / "demo.yaml"))
    ap.add_argument("--scratch", default=str(ROOT / "runs" / "worker_soak"),
                    help="where logs, run folders and runs.jsonl (the finished runs) are kept")
    ap.add_argument("--results", default=str(RESULTS / "worker_soak"), help="results path without suffix")
    ap.add_argument("--from-index", type=int, default=0,
                    help="run only indices from this one on: a second instance with its own --scratch takes the "
                         "upper indices, and --merge adds its runs to the summary")
    ap.add_argument("--merge", nargs="*", default=[], metavar="SCRATCH",
                    help="other instances' scratch folders whose finished runs the summary also counts")
    args = ap.parse_args()
    scratch = Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    done_file = scratch / "runs.jsonl"
    runs = _finished_runs(scratch)
    done = {(r["variant"], r["run"]) for r in runs}
    todo = [(v, i) for i in range(args.from_index, args.runs) for v in args.variants if (v, i) not in done]
    runs += [r for other in args.merge for r in _finished_runs(Path(other))]
    print(f"{len(done)} run(s) already done; {len(todo)} to go", flush=True)
    machine = machine_note()
    server = PostgresServer().start()
    # a SIGTERM (or Ctrl-C) still stops the server, which outlives this process otherwise
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        for variant, index in todo:
            r = run_once(server, Path(args.experiment), variant, index, scratch)
            LIVE.clear()
            with done_file.open("a") as f:
                f.write(json.dumps(r) + "\n")
            runs.append({**r, "scratch": relative(scratch)})
            print(f"{variant} #{index}: {'clean' if r['clean'] else 'NOT CLEAN'}; exits {r['exit_codes']}, "
                  f"distinct {r['distinct']}, trained twice {r['trained_twice']}, left running {r['left_running']}, "
                  f"{r['wall_s']:.0f} s, load {r['load_1min']}" + "".join(f"\n  {c['worker']}: {c['cause']}"
                                                                          for c in r["causes"]), flush=True)
    finally:
        for p in LIVE:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
        server.stop()
        data, md = summarise(runs, machine)
        Path(args.results + ".json").write_text(json.dumps(data, indent=1) + "\n")
        Path(args.results + ".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
