"""Mutation testing of the safety-critical modules: does breaking the code fail a test?

Each module is mutated by mutmut (one small change per mutant: an operator, a constant, a
removed call...) and run against the tests that cover it, not the whole suite, so that the
run fits on a small machine. A mutant is *killed* when a test fails, *survives* when all
pass. Each module works in its own folder ``.mutation/<name>/`` (a copy of the repository
with that module's ``[mutmut]`` settings in its setup.cfg); a rerun resumes there, and
re-tests only the functions whose code changed.

Usage (``make mutation`` runs every module)::

    python experiments/mutation.py [MODULE ...] [--children 2] [--list]

Writes ``experiments/results/mutation.json`` (counts per module and the surviving mutants'
diffs; modules not run keep their last entry) and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import datetime
import fnmatch
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / ".mutation"
RESULTS = REPO / "experiments" / "results" / "mutation.json"


@dataclass
class Module:
    """One module to mutate: its file, the tests that cover it, and (optionally) the functions
    of it that are mutated (mutmut's names: ``x_function``, ``xǁClassǁmethod``)."""

    path: str
    tests: list[str]
    functions: list[str] = field(default_factory=list)
    why: str = ""
    # the tests run the module in processes they start, where mutmut sees no calls: every
    # selected test counts as covering every function (experiments/mutation_whole_module.py)
    whole: bool = False

    def patterns(self) -> list[str]:
        dotted = self.path.removesuffix(".py").replace("/", ".")
        return [f"{dotted}.{f}__mutmut_*" for f in self.functions]


# storage.py's functions (mutmut's names), split in two so that each mutant runs only the tests
# that can catch it: the heartbeat's test alone takes 18-22 s on a real server
STORAGE_FUNCTIONS = ["x_normalise_url", "x_mask_url", "x_is_database", "x_open_storage", "x__lost_schema_race",
                     "x_retry_callback", "x_retried_trial_number", "x__where", "x__first_line", "x_with_retries",
                     "x_is_transient", "x__root", "x__retried", "xǁHeartbeatǁ__init__", "xǁHeartbeatǁ__enter__",
                     "xǁHeartbeatǁ_beat", "xǁHeartbeatǁ__exit__", "x_heartbeat_interval", "xǁClaimLockǁ__init__",
                     "xǁClaimLockǁacquire", "xǁClaimLockǁ_advisory_lock", "xǁClaimLockǁrelease", "x__close_quietly"]
HEARTBEAT_FUNCTIONS = ["xǁHeartbeatǁ__init__", "xǁHeartbeatǁ__enter__", "xǁHeartbeatǁ_beat", "xǁHeartbeatǁ__exit__",
                       "x_heartbeat_interval"]

MODULES: dict[str, Module] = {
    "fingerprint": Module(
        "dime_nas/search/study.py",
        ["tests/test_study_fingerprint.py",  # and the tests of join_study's other jobs: storage, sampler, pruner, --force
         "tests/test_search.py::test_a_rerun_with_different_settings_is_refused_naming_the_key_unless_forced",
         "tests/test_search.py::test_a_continued_random_search_proposes_new_architectures",
         "tests/test_search.py::test_single_objective_study_prunes_on_the_intermediate_accuracy",
         "tests/test_search.py::test_a_silent_trial_is_failed_after_the_experiments_grace_and_run_again_as_often_as_it_allows",
         "tests/test_search.py::test_workers_sharing_a_study_draw_their_own_students_and_a_lone_search_repeats_itself",
         "tests/test_report.py::test_a_study_made_by_join_study_carries_what_its_report_reads",
         "tests/test_extending.py::test_a_metric_a_backend_and_a_sampler_added_in_one_place_each_drive_a_search",
         "tests/test_search.py::test_pruning_starts_after_four_finished_trials_and_from_the_second_report"],
        ["x_teacher_identity", "x_experiment_fingerprint", "x_with_added_settings", "x_first_difference",
         "x__lookup", "x_join_study"],
        "the study fingerprint: a continued study of other settings is refused"),
    "latency": Module(
        "dime_nas/cost/latency.py", ["tests/test_cost_latency.py", "tests/test_latency_timed_file.py"],
        why="the latency of a tower on a target: which file, which provider, what statistics"),
    "budget_check": Module(
        "dime_nas/cost/budget_check.py", ["tests/test_budget_check.py"],
        why="the near-budget rule: a latency near the budget is re-measured before it decides"),
    "storage": Module(
        "dime_nas/search/storage.py",
        ["tests/test_storage.py", "tests/test_claim_lock.py", "tests/test_worker_retries.py", "tests/test_run_dir.py",
         "tests/test_config.py::test_unreachable_storage_is_reported",
         "tests/test_workers.py::test_wrong_password_and_unreachable_host_fail_in_one_line",
         "tests/test_workers.py::test_each_trial_records_its_architecture_while_it_holds_the_claim_lock"],
        # the three-worker run (25 s) checks the claim lock's exclusion by chance, which
        # test_claim_lock.py checks directly; the heartbeat's functions have a module of their own
        [f for f in STORAGE_FUNCTIONS if f not in HEARTBEAT_FUNCTIONS],
        "the study's storage: URLs, clear errors, retries, the claim lock", whole=True),
    "storage_heartbeat": Module(
        "dime_nas/search/storage.py",
        ["tests/test_storage.py::test_a_trial_beats_while_it_runs_and_stops_when_it_ends",
         "tests/test_storage.py::test_a_storage_without_heartbeats_gets_no_beats",
         "tests/test_workers.py::test_a_killed_worker_s_trial_is_failed_by_heartbeat_and_retried",  # 18-22 s
         "tests/test_worker_retries.py"],
        HEARTBEAT_FUNCTIONS, "the heartbeat: a dead worker's trial is failed and retried", whole=True),
    "objective_claim_reuse": Module(
        "dime_nas/search/objective.py",
        ["tests/test_search.py::test_trials_count_distinct_architectures_and_repeats_are_reused_not_retrained",
         "tests/test_search.py::test_a_space_smaller_than_the_trial_count_stops_at_the_cap",
         # the claim across processes, on SQLite (the PostgreSQL three-worker test checks the same
         # property at 100 s a run: too slow to run per mutant on 2 cores)
         "tests/test_local_workers.py::test_a_search_with_two_local_workers_holds_each_architecture_once",
         "tests/test_search.py::test_a_claimed_architecture_takes_the_teachers_embedding_width_and_is_recorded_whole",
         "tests/test_search.py::test_a_trial_waiting_for_its_running_twin_looks_for_dead_workers_meanwhile",
         "tests/test_search.py::test_a_twin_that_failed_or_was_pruned_is_not_waited_for",
         "tests/test_record.py::test_a_repeat_copies_the_result_but_keeps_its_own_worker",
         "tests/test_record.py::test_a_repeat_of_a_repeat_names_the_trial_that_trained_and_copies_values_and_constraints"],
        ["x_claim_architecture", "x_run_trial", "x__find_previous", "x__reuse"],
        "a trial claims its architecture; a repeat reuses the earlier result instead of training", whole=True),
    "agent_app": Module(
        "dime_nas/agent/app.py", ["tests/test_agent_requests.py", "tests/test_agent_queue.py", "tests/test_agent_routes.py",
                                  "tests/test_agent.py"],
        why="the measurement agent's HTTP API: authentication, uploads, measurement requests", whole=True),
}

STATUSES = ("killed", "survived", "no tests", "timeout", "suspicious", "skipped", "segfault", "not checked",
            "caught by type check")
# Files the tests read beside the code and the tests themselves (mutmut copies those two).
ALSO_COPY = ["experiments", "Makefile", "README.md", "pyproject.toml", "docs", ".ci"]


def _repo_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                         capture_output=True).stdout.decode()
    return [f for f in out.split("\0") if f]


def prepare(name: str, module: Module) -> Path:
    """The module's folder: the repository's files (copied only where changed, so mutmut's
    record of what it tested stays valid) and its [mutmut] settings."""
    root = WORK / name
    for rel in _repo_files():
        src, dst = REPO / rel, root / rel
        if not src.is_file():
            continue
        if not dst.exists() or dst.read_bytes() != src.read_bytes():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    settings = {
        "source_paths": ["dime_nas"],
        "only_mutate": [module.path],
        "pytest_add_cli_args_test_selection": module.tests,
        "pytest_add_cli_args": ["-x", "-q", "-p", "mutation_whole_module"],
        "also_copy": [p for p in ALSO_COPY if (REPO / p).exists()],
    }
    # the coverage pass records no calls: in a process a test starts (elsewhere than the module's
    # folder) mutmut cannot find its settings and the process dies; the plugin counts coverage instead
    depth = "dependency_tracking_depth = 0\n" if module.whole else ""
    # forkserver: mutants forked from a process that ran torch hang on its thread pool's locks
    section = "\n[mutmut]\nuse_git_change_detection = false\nprocess_isolation = forkserver\n" + depth + "".join(
        f"{k} =\n" + "".join(f"    {v}\n" for v in vs) for k, vs in settings.items())
    cfg = (REPO / "setup.cfg").read_text()
    (root / "setup.cfg").write_text(cfg.split("\n[mutmut]\n")[0] + section)
    return root


def run(name: str, module: Module, children: int, only: list[str] | None = None) -> int:
    """``mutmut run`` in the module's folder, under nice; its output goes to mutmut.log there.

    ``only``: these mutants alone, tested again (after tests were added for them)."""
    root = prepare(name, module)
    # before Python starts: a PYTHONPATH folder missing at start-up is never searched later
    (root / "mutants").mkdir(exist_ok=True)
    # the tests' own subprocesses import the mutated copy too (mutmut puts it first only in its process)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "mutants"), str(REPO / "experiments")]),
           "OMP_NUM_THREADS": "1", "CI": "true"}
    env.pop("MUTANT_UNDER_TEST", None)
    if module.whole:
        env["DIME_NAS_MUTATE_WHOLE"] = str(root / "mutants" / f"{module.path}.meta")
    mutmut = Path(sys.executable).with_name("mutmut")
    cmd = ["nice", "-n", "10", str(mutmut), "run", "--max-children", str(children), *(only or module.patterns())]
    print(f"[{name}] {module.path} against {len(module.tests)} test file(s)/test(s); log: {root / 'mutmut.log'}",
          flush=True)
    with open(root / "mutmut.log", "w") as log:
        return subprocess.run(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT).returncode


def collect(name: str, module: Module) -> dict:
    """Counts by status and each surviving mutant's diff, from mutmut's record in the folder."""
    root = WORK / name
    env = {**os.environ, "PYTHONPATH": str(root / "mutants")}
    mutmut = str(Path(sys.executable).with_name("mutmut"))
    out = subprocess.run([mutmut, "results", "--all", "true"], cwd=root, env=env, capture_output=True, text=True,
                         check=True).stdout
    statuses = {}
    for line in out.splitlines():
        m = re.match(r"\s+(\S+): (.+)$", line)
        if m:
            statuses[m.group(1)] = m.group(2).strip()
    if module.functions:
        statuses = {k: v for k, v in statuses.items() if any(fnmatch.fnmatch(k, p) for p in module.patterns())}
    counts = {s: sum(1 for v in statuses.values() if v == s) for s in STATUSES}
    counts = {k: v for k, v in counts.items() if v}
    survivors = {}
    for mutant, status in sorted(statuses.items()):
        if status in ("survived", "no tests"):
            diff = subprocess.run([mutmut, "show", mutant], cwd=root, env=env, capture_output=True, text=True).stdout
            survivors[mutant] = {"status": status, "diff": _changed_lines(diff)}
    detected = counts.get("killed", 0) + counts.get("timeout", 0)
    checked = sum(counts.values()) - counts.get("not checked", 0) - counts.get("skipped", 0)
    log = (root / "mutmut.log").read_text(errors="replace") if (root / "mutmut.log").exists() else ""
    rate = re.findall(r"([\d.]+) mutations/second", log)
    return {"path": module.path, "functions": module.functions, "tests": module.tests, "why": module.why,
            "mutants": len(statuses), "counts": counts, "score": round(detected / checked, 3) if checked else None,
            "mutations_per_second": float(rate[-1]) if rate else None,
            "source_sha": _git_blob(str(root / module.path)),  # the version mutated: rerun when main's differs
            "finished": datetime.datetime.now().isoformat(timespec="seconds"),
            "survivors": survivors}


def _changed_lines(diff: str) -> list[str]:
    return [line for line in diff.splitlines() if line.startswith(("+", "-")) and not line.startswith(("+++", "---"))]


def _git_blob(path: str) -> str:
    return subprocess.run(["git", "hash-object", path], cwd=REPO, capture_output=True, text=True).stdout.strip()


def table(results: dict) -> str:
    lines = ["| module | file | mutants | killed | timeout | survived | no tests | score |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in results["modules"].items():
        c = r["counts"]
        lines.append(f"| {name} | `{r['path']}` | {r['mutants']} | {c.get('killed', 0)} | {c.get('timeout', 0)} | "
                     f"{c.get('survived', 0)} | {c.get('no tests', 0)} | {r['score']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help=f"modules to run (default: all): {', '.join(MODULES)}")
    parser.add_argument("--children", type=int, default=2, help="mutants tested at once (default 2)")
    parser.add_argument("--list", action="store_true", help="list the modules and their tests, run nothing")
    parser.add_argument("--collect-only", action="store_true", help="only re-read the results of earlier runs")
    parser.add_argument("--survivors", action="store_true",
                        help="test again only the mutants that survived the last run (after adding tests)")
    args = parser.parse_args()
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        parser.error(f"unknown module(s) {unknown}; known: {', '.join(MODULES)}")
    if args.list:
        for name, m in MODULES.items():
            print(f"{name}: {m.path} {m.functions or '(all functions)'}\n    tests: {' '.join(m.tests)}")
        return
    for name in args.modules or list(MODULES):
        start = time.time()
        if not args.collect_only:
            recorded = json.loads(RESULTS.read_text())["modules"].get(name, {}) if RESULTS.exists() else {}
            only = list(recorded.get("survivors", {})) if args.survivors else None
            if only == []:
                print(f"[{name}] no surviving mutants recorded: nothing to test again")
                continue
            code = run(name, MODULES[name], args.children, only)
            if code != 0:
                print(f"[{name}] mutmut exited {code}; see {WORK / name / 'mutmut.log'}", file=sys.stderr)
                continue
        entry = collect(name, MODULES[name])
        if not args.collect_only:
            entry["seconds"] = round(time.time() - start)
        # read just before writing: another module's run may have finished meanwhile
        results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"modules": {}}
        results["modules"][name] = {**results["modules"].get(name, {}), **entry}
        results["modules"][name]["machine"] = {
            "cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "load_avg_1m_at_end": round(os.getloadavg()[0], 2), "children": args.children}
        RESULTS.write_text(json.dumps(results, indent=1) + "\n")
        r = results["modules"][name]
        print(f"[{name}] {r['mutants']} mutants: {r['counts']} score {r['score']} in {r.get('seconds')} s", flush=True)
    if RESULTS.exists():
        print(table(json.loads(RESULTS.read_text())))


if __name__ == "__main__":
    main()
