"""One worker against two on one study: wall time of a fixed demo-sized search on this machine.

Starts a throw-away PostgreSQL server (as the tests do), then runs the demo experiment
(`experiments/demo.yaml`, its teacher and feature cache already built) three ways, each on
a fresh database: one process (`dime-nas search`), two processes (`search` + `worker`) with
the default threads, and two processes with one torch/onnxruntime thread each. Writes
experiments/results/workers.{json,md}.

    python experiments/benchmarks/workers.py [--experiment experiments/demo.yaml]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import RESULTS, ROOT  # common puts the checkout on sys.path

sys.path.insert(0, str(ROOT / "tests"))
from pg_server import PostgresServer  # noqa: E402


def _launch(command: str, experiment: Path, url: str, out: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dime_nas.cli", command, str(experiment), "--storage", url,
                             "--out", str(out), "--quiet"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _trials(run: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((run / "trials.csv").open()))


def run_case(server: PostgresServer, name: str, experiment: Path, workers: int, threads: int | None,
             scratch: Path) -> dict:
    url = server.create_database(name)
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)  # torch's training threads; onnxruntime keeps the target's
    t0 = time.time()
    procs = [_launch("search", experiment, url, scratch / name, env)]
    for i in range(1, workers):
        time.sleep(2.0)  # the search creates the study; workers join it
        procs.append(_launch("worker", experiment, url, scratch / f"{name}-w{i}", env))
    outs = [p.communicate(timeout=1800) for p in procs]
    wall = time.time() - t0
    failed = [o[1][-1500:] for p, o in zip(procs, outs) if p.returncode != 0]
    if failed:
        raise RuntimeError(f"{name}: a process failed:\n" + "\n".join(failed))
    subprocess.run([sys.executable, "-m", "dime_nas.cli", "report", str(scratch / name)], cwd=ROOT, env=env,
                   check=True, capture_output=True)
    rows = _trials(scratch / name)
    trained = [r for r in rows if r["status"] == "ok" and not r["reused_from"]]
    by_pid: dict[str, int] = {}
    for r in trained:
        by_pid[r["worker"]] = by_pid.get(r["worker"], 0) + 1
    return {"case": name, "workers": workers, "threads": threads, "wall_s": round(wall, 1),
            "trained": len(trained), "rows": len(rows), "trained_per_worker": sorted(by_pid.values()),
            "train_s": round(sum(float(r["train_s"] or 0) for r in trained), 1),
            "cost_s": round(sum(float(r["cost_s"] or 0) for r in rows if not r["reused_from"]), 1),
            "near_budget": sum(1 for r in rows if r["near_budget"] == "True" and not r["reused_from"]),
            "latency_ms": {r["describe"]: float(r["latency_ms"]) for r in rows
                           if not r["reused_from"] and r["latency_ms"]}}


def machine_note() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "unknown CPU")
    return f"{model}, {os.cpu_count()} cores, 1-min load average {os.getloadavg()[0]:.2f} at the start"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--experiment", default=str(ROOT / "experiments" / "demo.yaml"))
    ap.add_argument("--scratch", default="/tmp/dime_nas_workers_bench")
    args = ap.parse_args()
    scratch = Path(args.scratch)
    subprocess.run(["rm", "-rf", str(scratch)], check=True)
    scratch.mkdir(parents=True)
    server = PostgresServer().start()
    try:
        cases = [run_case(server, "one", Path(args.experiment), 1, None, scratch),
                 run_case(server, "two", Path(args.experiment), 2, None, scratch),
                 run_case(server, "two_1thread", Path(args.experiment), 2, 1, scratch)]
    finally:
        server.stop()
    base = cases[0]
    shared = [d for d in base["latency_ms"] if all(d in c["latency_ms"] for c in cases)]
    for c in cases:
        c["speedup"] = round(base["wall_s"] / c["wall_s"], 2)
        ratios = sorted(c["latency_ms"][d] / base["latency_ms"][d] for d in shared)
        c["latency_vs_one_median"] = round(ratios[len(ratios) // 2], 2) if ratios else None
    out = {"experiment": str(Path(args.experiment).relative_to(ROOT)), "machine": machine_note(), "cases": cases}
    (RESULTS / "workers.json").write_text(json.dumps(out, indent=1) + "\n")
    lines = ["# One worker against two on one study", "",
             f"Experiment `{out['experiment']}` (its teacher and feature cache built before), a fresh PostgreSQL "
             f"database per case; {out['machine']}.", "",
             "| case | workers | threads | wall s | speed-up | students trained (per worker) | training s (sum) "
             "| cost s (sum) | near-budget | latency vs one worker (median ratio) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for c in cases:
        lines.append(f"| {c['case']} | {c['workers']} | {c['threads'] or 'default'} | {c['wall_s']} | {c['speedup']} "
                     f"| {c['trained']} ({', '.join(map(str, c['trained_per_worker']))}) | {c['train_s']} "
                     f"| {c['cost_s']} | {c['near_budget']} | {c['latency_vs_one_median']} |")
    (RESULTS / "workers.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
