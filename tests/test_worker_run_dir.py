"""Workers on one machine share a run folder (README's commands give them the same default ``out_dir``):
each claims and records it as it starts, while the others read it."""
from __future__ import annotations

import multiprocessing
from types import SimpleNamespace

from dime_nas.run_dir import RunDir


def _claim_and_record(path: str, times: int, errors) -> None:
    config = SimpleNamespace(name="demo", source="experiments/demo.yaml")
    for _ in range(times):
        try:
            RunDir(path).claim(config)  # reads the marker another worker may be writing
        except Exception as exc:  # noqa: BLE001 - any error here stops a worker at start
            errors.put(repr(exc))
            return


def test_workers_claiming_one_run_folder_at_once_never_read_a_half_written_marker(tmp_path):
    """Before the marker was written atomically, 4 processes x 300 claims failed thousands of times with
    JSONDecodeError (a reader saw the file truncated, not yet rewritten)."""
    ctx = multiprocessing.get_context("fork")
    errors = ctx.Queue()
    procs = [ctx.Process(target=_claim_and_record, args=(str(tmp_path / "run"), 300, errors)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert errors.empty(), errors.get()
    assert RunDir(tmp_path / "run").marker.read_text().startswith("{")
