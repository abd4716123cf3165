"""pytest plugin for experiments/mutation.py: in mutmut's coverage pass, count each selected test
as covering every function of the mutated module.

mutmut runs a mutant only against the tests it saw call the mutated function, and it sees
calls in the test process only. Some modules are exercised in processes the tests start (the
measurement agent, search workers, a claim-lock holder), so without this their mutants would
be reported as having no tests. ``DIME_NAS_MUTATE_WHOLE`` names the module's mutmut record
(``mutants/<path>.meta``); unset, the plugin does nothing.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest


@pytest.hookimpl(tryfirst=True)  # before mutmut's collector reads the hits of this test
def pytest_runtest_teardown(item, nextitem):
    meta = os.environ.get("DIME_NAS_MUTATE_WHOLE")
    if not meta or os.environ.get("MUTANT_UNDER_TEST") != "stats":
        return
    from mutmut.state import state

    for mutant in json.loads(Path(meta).read_text())["exit_code_by_key"]:
        state()._stats.add(mutant.partition("__mutmut_")[0])


def pytest_collection_modifyitems(config, items):
    """With a mutant under test, the fastest tests first (by mutmut's recorded durations): with
    ``-x`` a mutant stops at its first failing test, so a killed one rarely waits for a slow test
    (mutmut hands pytest its tests in no particular order)."""
    if os.environ.get("MUTANT_UNDER_TEST") in (None, "", "stats"):
        return
    for stats in (Path("mutants/mutmut-stats.json"), Path("mutmut-stats.json")):
        if stats.exists():
            durations = json.loads(stats.read_text())["duration_by_test"]
            items.sort(key=lambda item: durations.get(item.nodeid, float("inf")))
            return
