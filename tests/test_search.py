from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import optuna
import pytest

from conftest import write_experiment
from dime_nas import api
from dime_nas.config import load_experiment
from dime_nas.run_dir import RunDir
from dime_nas.search.record import TrialRecord, trial_status
from dime_nas.search.study import trial_counts


def _search(tmp_path, teacher_dir, **kw):
    config = load_experiment(write_experiment(tmp_path, teacher_dir, **kw))
    return config, api.search(config, out=tmp_path / "run", progress=False)


def test_search_runs_trials_and_writes_the_report(tmp_path, tiny_teacher_dir):
    config, outcome = _search(tmp_path, tiny_teacher_dir, trials=4)
    trials = outcome.study.get_trials()
    assert len({t.user_attrs["arch_key"] for t in trials}) == 4 and outcome.new_trials == len(trials)
    done = [t for t in trials if t.user_attrs.get("status") == "ok"]
    assert done, [t.user_attrs.get("reason") for t in trials]
    for t in done:
        if "reused_from" not in t.user_attrs:
            assert t.user_attrs["teacher_forwards"] == 0 and t.user_attrs["train_steps"] == 4
        cost = t.user_attrs["cost"]
        assert cost["latency_ms"] > 0 and 0 <= t.user_attrs["metrics"]["accuracy"] <= 1
        assert cost["latency_ms"] == min(cost["latency_readings_ms"]) == t.user_attrs["metrics"]["latency_ms"]
        assert t.user_attrs["cost"]["per_tower"]["image"]["providers"] == ["CPUExecutionProvider"]
        assert set(t.user_attrs["timings"]) == {"cost_s", "train_s", "eval_s"}
    run = RunDir(tmp_path / "run")
    assert outcome.run.path == run.path and outcome.storage == run.default_storage()
    for path in (run.trials_csv, run.pareto_csv, run.selected_json, run.report_md, run.pareto_plot("latency_ms"),
                 run.pareto_plot("gmacs"), run.report_html, run.config_file, run.marker, run.study_db):
        assert path.stat().st_size > 0, path
    summary = outcome.summary
    assert summary["selected"] and set(summary["front"]) <= {t.number for t in done}
    assert run.load_config().name == "t" and run.storage == outcome.storage
    assert outcome.new_trials == len(trials) and outcome.already_done == 0 and not outcome.interrupted
    assert outcome.train_steps == 4 * 4 and outcome.prepare_seconds + outcome.search_seconds <= outcome.seconds
    # the report again, with one more budget: the selection names it
    again = api.report(run, budgets=["params_m <= 1"], top_k=1)
    assert any("best accuracy with params_m <= 1" in why for p in again["selected"] for why in p["why"])
    header = run.trials_csv.read_text().splitlines()[0].split(",")
    for column in ("number", "state", "reason", "arch_key", "config_json", "params_m", "gmacs", "gflops",
                   "image_latency_median_ms", "image_latency_p90_ms", "accuracy", "cost_s", "train_s", "eval_s"):
        assert column in header


def test_over_budget_trials_end_before_training(tmp_path, tiny_teacher_dir):
    config, outcome = _search(tmp_path, tiny_teacher_dir, trials=3, budgets=["params_m <= 0.001"])
    assert outcome.train_steps == 0
    for t in outcome.study.get_trials():
        assert t.user_attrs["status"] == "infeasible" and t.user_attrs.get("train_steps", 0) == 0
        assert "params_m" in t.user_attrs["reason"] and t.constraints["params_m <= 0.001"] > 0
        assert t.user_attrs["cost"]["params_m"] > 0.001  # its measured cost is recorded
    summary = outcome.summary
    assert summary["counts"]["rejected_before_training"] == 3 and summary["selected"] == []


def test_trials_count_distinct_architectures_and_repeats_are_reused_not_retrained(tmp_path, tiny_teacher_dir):
    config, outcome = _search(tmp_path, tiny_teacher_dir, trials=6)
    trials = outcome.study.get_trials()
    keys = [t.user_attrs["arch_key"] for t in trials]
    reused = [t for t in trials if "reused_from" in t.user_attrs]
    assert len(set(keys)) == 6 == outcome.distinct and len(trials) == 6 + len(reused) and not outcome.capped
    assert reused  # the space has 8 configs: a random sampler repeats itself before it finds 6
    for t in reused:
        first = outcome.study.trials[t.user_attrs["reused_from"]]
        assert first.user_attrs["arch_key"] == t.user_attrs["arch_key"] and t.values == first.values
    assert outcome.train_steps == 4 * 6
    summary = outcome.summary
    assert summary["counts"]["distinct"] == 6 and summary["counts"]["reused"] == len(reused)


def test_a_space_smaller_than_the_trial_count_stops_at_the_cap(tmp_path, tiny_teacher_dir):
    config, outcome = _search(tmp_path, tiny_teacher_dir, trials=10)  # the space has 8 configs
    trials = outcome.study.get_trials()
    assert outcome.capped and len(trials) == 30 and outcome.distinct == 8
    assert len({t.user_attrs["arch_key"] for t in trials}) == 8 and outcome.train_steps == 4 * 8


def test_a_continued_random_search_proposes_new_architectures(tmp_path, tiny_teacher_dir):
    from dime_nas.search.samplers import sampler_seed

    config, first = _search(tmp_path, tiny_teacher_dir, trials=3)
    first_keys = [t.user_attrs["arch_key"] for t in first.study.get_trials()]
    more = api.search(config, out=tmp_path / "run", trials=6, progress=False)
    new = more.study.get_trials()[len(first_keys):]
    # a replayed sampler would propose the first run's architectures again, all reuses
    assert [t.user_attrs["arch_key"] for t in new[:len(first_keys)]] != first_keys
    assert more.distinct == 6 and sum("reused_from" not in t.user_attrs for t in new) == 3
    assert sampler_seed(0, 0) == 0 and sampler_seed(0, 3) != sampler_seed(0, 4) != 0


def test_a_trial_that_raises_is_recorded_and_the_study_goes_on(tmp_path, tiny_teacher_dir, monkeypatch):
    import dime_nas.distill.trainer as trainer

    real, calls = trainer.distill, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("simulated out of memory")
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "distill", flaky)
    config, outcome = _search(tmp_path, tiny_teacher_dir, trials=3)
    states = [t.state for t in outcome.study.get_trials()]
    assert states[0] == optuna.trial.TrialState.FAIL and len(states) == 3
    first = outcome.study.trials[0]
    assert first.user_attrs["status"] == "failed" and "simulated out of memory" in first.user_attrs["reason"]
    assert optuna.trial.TrialState.COMPLETE in states[1:]


def test_killed_search_resumes_keeping_finished_trials(tmp_path, tiny_teacher_dir):
    exp = write_experiment(tmp_path, tiny_teacher_dir, trials=50)
    cmd = [sys.executable, "-m", "dime_nas.cli", "search", str(exp), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    db = tmp_path / "run" / "study.db"
    deadline, finished, running = time.time() + 240, [], []
    while time.time() < deadline and (len(finished) < 2 or not running):  # kill inside a trial
        time.sleep(0.05)
        if db.exists():
            try:
                with sqlite3.connect(db) as con:
                    finished = con.execute("select number from trials where state = 'COMPLETE'").fetchall()
                    # a trial that has recorded its worker: one killed before that (right after Optuna's
                    # ask) is only failed once ORPHAN_GRACE_S has passed, which is not what this tests
                    running = con.execute("select t.number from trials t join trial_user_attributes a "
                                          "on a.trial_id = t.trial_id where t.state = 'RUNNING' "
                                          "and a.key = 'worker'").fetchall()
            except sqlite3.OperationalError:
                pass
    assert len(finished) >= 2 and running, \
        proc.stderr.read().decode()[-2000:] if proc.poll() is not None else "too slow"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    storage = f"sqlite:///{db}"
    killed = optuna.load_study(study_name="t", storage=storage).get_trials()
    before = {t.number: t.values for t in killed if t.state == optuna.trial.TrialState.COMPLETE}
    in_flight = [t.number for t in killed if t.state == optuna.trial.TrialState.RUNNING]
    assert in_flight
    out = subprocess.run([*cmd, "--trials", str(len(before) + 2)], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"{len(killed)} already done before this run" in out.stdout, out.stdout
    study = optuna.load_study(study_name="t", storage=storage)
    after = {t.number: t for t in study.get_trials()}
    for number, values in before.items():
        assert after[number].values == values
    for number in in_flight:  # the trial the kill cut short is failed as interrupted, not lost or left running
        assert after[number].state == optuna.trial.TrialState.FAIL
        assert trial_status(after[number]) == "interrupted"
        retries = [t for t in after.values() if t.user_attrs.get("retry_of") == number]
        assert len(retries) == 1  # run again once, with the same architecture when it was already sampled
        assert all(retries[0].params[k] == v for k, v in after[number].params.items())
    assert trial_counts(study)[0] == len(before) + 2  # --trials counts distinct evaluated architectures
    assert not [t for t in after.values() if t.state == optuna.trial.TrialState.RUNNING]
    assert (tmp_path / "run" / "report.md").exists()


def test_run_directory_of_another_experiment_is_refused(tmp_path, tiny_teacher_dir, capsys):
    from dime_nas.cli import main
    from dime_nas.errors import ConfigError

    exp = write_experiment(tmp_path, tiny_teacher_dir, trials=1)
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.marker.write_text(json.dumps({"name": "someone-else"}))
    with pytest.raises(ConfigError, match="belongs to experiment 'someone-else'") as info:
        api.search(exp, out=run.path, progress=False)
    assert info.value.key == "out_dir" and not run.is_run  # refused before anything was recorded
    assert main(["search", str(exp), "--quiet", "--out", str(run.path)]) == 2
    assert "someone-else" in capsys.readouterr().err
    api.search(exp, out=run.path, trials=1, force=True, progress=False)  # forced: the folder is claimed
    assert json.loads(run.marker.read_text())["name"] == "t"


def test_single_objective_study_prunes_on_the_intermediate_accuracy(tmp_path, tiny_teacher_dir, monkeypatch):
    extra = "objectives: [{metric: accuracy}]"
    path = write_experiment(tmp_path, tiny_teacher_dir, trials=2, extra=extra)
    config = load_experiment(path)
    config.distill.eval_every = 2
    reported = []

    def should_prune(self):
        reported.append(self.number)
        return self.number == 1  # prune the second trial at its first report

    monkeypatch.setattr(optuna.trial.Trial, "should_prune", should_prune)
    outcome = api.search(config, out=tmp_path / "run", progress=False)
    first, second = outcome.study.get_trials()
    assert first.state == optuna.trial.TrialState.COMPLETE and first.intermediate_values
    assert second.state == optuna.trial.TrialState.PRUNED and second.user_attrs["status"] == "pruned"
    assert list(second.intermediate_values) == [2]


def _bad_trial_pruned_at(study: optuna.Study, step: int) -> bool:
    """A trial far below the others, reported up to ``step``: does the study's pruner stop it?"""
    trial = study.ask()
    for s in range(step + 1):
        trial.report(0.1, s)
    pruned = trial.should_prune()
    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    return pruned


@pytest.mark.parametrize("joined", ["new", "continued", "forced"])
def test_pruning_starts_after_four_finished_trials_and_from_the_second_report(tmp_path, tiny_teacher_dir, joined):
    """join_study's pruner, in a new study, a continued one and one started again by --force: a
    trial far below the median is stopped only once 4 trials have finished, and never at its
    first report (warm-up)."""
    from dime_nas.run_dir import RunDir
    from dime_nas.search.objective import TrialContext
    from dime_nas.search.study import join_study

    config = load_experiment(write_experiment(tmp_path, tiny_teacher_dir, extra="objectives: [{metric: accuracy}]"))
    ctx = TrialContext.for_experiment(config, None, None, progress=False)
    url, run = f"sqlite:///{tmp_path / 'study.db'}", RunDir.of(config, tmp_path / "run")
    run.path.mkdir()  # --force keeps the old study there
    study, _ = join_study(config, ctx, url, run=run)
    if joined != "new":
        if joined == "forced":
            config.distill.steps += 1  # a fingerprinted setting: only --force starts the study again
        study, _ = join_study(config, ctx, url, run=run, force=joined == "forced")

    def finish(n: int) -> None:
        for _ in range(n):
            trial = study.ask()
            trial.report(0.9, 0)
            trial.report(0.9, 1)
            study.tell(trial, 0.9)

    finish(3)
    assert not _bad_trial_pruned_at(study, 1)  # 3 finished: too few to judge by
    finish(1)
    assert not _bad_trial_pruned_at(study, 0)  # the first report is warm-up
    assert _bad_trial_pruned_at(study, 1)


def test_only_trials_of_dead_workers_are_marked_interrupted(tmp_path, monkeypatch):
    """On a journal (or any) storage: live workers' trials stay RUNNING; dead or orphaned ones fail."""
    import datetime
    import socket

    from optuna.storages.journal import JournalFileBackend

    from dime_nas.search.study import ORPHAN_GRACE_S, _fail_interrupted

    storage = optuna.storages.JournalStorage(JournalFileBackend(str(tmp_path / "journal.log")))
    study = optuna.create_study(storage=storage, study_name="j")
    dead_pid = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                                  text=True).stdout)
    host = socket.gethostname()
    live, gone, elsewhere, orphan, fresh = (study.ask() for _ in range(5))
    live.set_user_attr("worker", {"host": host, "pid": os.getpid()})
    gone.set_user_attr("worker", {"host": host, "pid": dead_pid})
    elsewhere.set_user_attr("worker", {"host": "another-machine", "pid": 1})
    # orphan and fresh never recorded a worker; the orphan was asked long ago
    real_get, long_ago = study.get_trials, datetime.datetime.now() - datetime.timedelta(seconds=ORPHAN_GRACE_S + 5)

    def aged(*args, **kwargs):
        out = real_get(*args, **kwargs)
        for t in out:
            if t.number == orphan.number:
                t.datetime_start = long_ago
        return out

    monkeypatch.setattr(study, "get_trials", aged)
    _fail_interrupted(study)
    monkeypatch.undo()
    states = {t.number: t.state for t in study.get_trials()}
    assert states[gone.number] == states[orphan.number] == optuna.trial.TrialState.FAIL
    assert states[live.number] == states[elsewhere.number] == states[fresh.number] == optuna.trial.TrialState.RUNNING
    assert trial_status(study.trials[gone.number]) == "interrupted"


def test_a_rerun_with_different_settings_is_refused_naming_the_key_unless_forced(tmp_path, tiny_teacher_dir):
    from dime_nas.errors import ConfigError

    config, first = _search(tmp_path, tiny_teacher_dir, trials=1)
    config.distill.steps = 5  # a trial of this setting is not comparable with the first
    with pytest.raises(ConfigError, match="distill.steps = 4.*has 5") as info:
        api.search(config, out=tmp_path / "run", trials=2, progress=False)
    assert info.value.key == "distill.steps"
    again = api.search(config, out=tmp_path / "run", trials=1, force=True, progress=False)
    assert [t.user_attrs["train_steps"] for t in again.study.get_trials()] == [5]  # a new study
    backups = list((tmp_path / "run").glob("previous-*.db"))
    old = optuna.load_study(study_name="t", storage=f"sqlite:///{backups[0]}")
    assert len(backups) == 1 and [t.user_attrs["train_steps"] for t in old.get_trials()] == [4]
    # the same settings continue the study
    assert api.search(config, out=tmp_path / "run", trials=2, progress=False).already_done == 1


def test_trials_and_selection_never_read_the_test_split(tmp_path, tiny_teacher_dir, monkeypatch):
    from dime_nas.data.cache import FeatureCache

    asked = []
    real_tasks, real_retrieval = FeatureCache.tasks, FeatureCache.retrieval
    monkeypatch.setattr(FeatureCache, "tasks", lambda self, split="val": asked.append(split) or real_tasks(self, split))
    monkeypatch.setattr(FeatureCache, "retrieval",
                        lambda self, split="val": asked.append(split) or real_retrieval(self, split))
    config, outcome = _search(tmp_path, tiny_teacher_dir, trials=2)
    api.report(outcome.run)
    assert "val" in asked and "test" not in asked


def test_seeds_score_a_trial_by_the_mean_of_several_short_runs(tmp_path, tiny_teacher_dir, monkeypatch):
    from dime_nas import evaluate
    from dime_nas.distill import trainer

    path = write_experiment(tmp_path, tiny_teacher_dir, trials=2)
    path.write_text(path.read_text().replace("distill: {steps: 4,", "distill: {seed: 5, seeds: 2, steps: 4,", 1))
    seeds_run, real = [], trainer.distill

    def recording(config, cache, settings, **kw):
        seeds_run.append(settings.seed)
        return real(config, cache, settings, **kw)

    monkeypatch.setattr(trainer, "distill", recording)
    scores, score = [], evaluate.evaluate_towers

    def scoring(towers, **kw):  # each short run is scored once, at its end
        metrics = score(towers, **kw)
        scores.append(metrics["accuracy"])
        return metrics

    monkeypatch.setattr(evaluate, "evaluate_towers", scoring)
    outcome = api.search(load_experiment(path), out=tmp_path / "run", progress=False)
    trained = [t for t in outcome.study.get_trials() if t.user_attrs.get("train_steps")]
    assert trained and seeds_run == [5, 6] * len(trained) and outcome.train_steps == 2 * 4 * len(trained)
    for t, (a, b) in zip(trained, zip(scores[::2], scores[1::2])):
        m = t.user_attrs["metrics"]
        assert t.user_attrs["train_steps"] == 8 and m["accuracy"] == pytest.approx((a + b) / 2)
        assert m["seed_std/accuracy"] == pytest.approx(abs(a - b) / 2 ** 0.5)
    assert "seed_std/accuracy" in RunDir(tmp_path / "run").trials_csv.read_text().splitlines()[0].split(",")


def test_mean_over_seeds_averages_every_number_and_gives_the_spread_of_the_headline_ones():
    from dime_nas.search.evaluators import mean_over_seeds

    out = mean_over_seeds([{"accuracy": 0.5, "task/a/top1": 0.2, "split": "val"},
                           {"accuracy": 0.7, "task/a/top1": 0.4, "split": "val"}])
    assert out["accuracy"] == pytest.approx(0.6) and out["task/a/top1"] == pytest.approx(0.3)
    assert out["seed_std/accuracy"] == pytest.approx(0.02 ** 0.5)  # sample std of 0.5 and 0.7
    assert "seed_std/task/a/top1" not in out and out["split"] == "val"
    assert mean_over_seeds([{"accuracy": 0.5}]) == {"accuracy": 0.5}


def test_image_accuracy_can_be_the_objective(tmp_path, tiny_teacher_dir):
    """The reading that ranks students with their own text tower best: trials are scored by it."""
    extra = "objectives:\n  - metric: image_accuracy\n  - metric: latency_ms\n"
    config, outcome = _search(tmp_path, tiny_teacher_dir, trials=2, extra=extra)
    trained = [t for t in outcome.study.get_trials() if t.user_attrs.get("train_steps")]
    assert trained
    for t in trained:
        m = t.user_attrs["metrics"]
        assert t.values[0] == m["image_accuracy"] == m["accuracy"]  # the teacher's text tower: the same number
    assert "image_accuracy" in RunDir(tmp_path / "run").trials_csv.read_text().splitlines()[0].split(",")


def test_a_study_recorded_before_a_setting_existed_continues_at_its_old_value(tmp_path, tiny_teacher_dir):
    from dime_nas.errors import ConfigError

    config, first = _search(tmp_path, tiny_teacher_dir, trials=1)
    _recorded_without_added_settings(first.study)
    assert api.search(config, out=tmp_path / "run", trials=2, progress=False).already_done == 1
    config.distill.seeds = 2  # not what the old study did
    with pytest.raises(ConfigError, match="distill.seeds = 1.*has 2"):
        api.search(config, out=tmp_path / "run", trials=3, progress=False)


TEXT_TOWER_SPACE = """
name: with-text
embed_dim: 64
image:
  kind: vit
  vit: {layers: [1], width: [32], heads: [2], mlp_ratio: [2.0], patch_size: [16], image_size: [32]}
text:
  kind: [teacher, transformer]
  transformer: {layers: [1], width: [32], heads: [2], context_length: [16]}
"""


def test_students_with_their_own_text_tower_train_the_scaled_short_run(tmp_path, tiny_teacher_dir):
    path = write_experiment(tmp_path, tiny_teacher_dir, trials=2)
    (tmp_path / "space.yaml").write_text(TEXT_TOWER_SPACE)
    path.write_text(path.read_text().replace("distill: {steps: 4,", "distill: {text_tower_step_scale: 1.5, steps: 4,", 1))
    outcome = api.search(load_experiment(path), out=tmp_path / "run", progress=False)
    steps = {t.user_attrs["config"]["text"]["kind"]: t.user_attrs["train_steps"] for t in _evaluated(outcome.study)}
    assert steps == {"teacher": 4, "transformer": 6} and outcome.train_steps == 10


def _evaluated(study):
    """The trials that trained a student (not the repeats that reused a result)."""
    return [t for t in study.get_trials() if not TrialRecord.from_trial(t).is_repeat]


def _recorded_without_added_settings(study):
    recorded = dict(study.user_attrs["fingerprint"])  # as a version before seeds and the text-tower scale wrote it
    recorded["distill"] = {k: v for k, v in recorded["distill"].items() if k not in ("seeds", "text_tower_step_scale")}
    study.set_user_attr("fingerprint", recorded)


def test_the_text_tower_scale_splits_studies_only_where_the_space_has_a_student_text_tower(tmp_path, tiny_teacher_dir):
    from dime_nas.errors import ConfigError

    config, first = _search(tmp_path, tiny_teacher_dir, trials=1)  # teacher text only: the scale changes nothing
    _recorded_without_added_settings(first.study)
    config.distill.text_tower_step_scale = 3.0
    assert api.search(config, out=tmp_path / "run", trials=2, progress=False).already_done == 1

    other = tmp_path / "with_text"
    other.mkdir()
    path = write_experiment(other, tiny_teacher_dir, trials=1)
    (other / "space.yaml").write_text(TEXT_TOWER_SPACE)
    config = load_experiment(path)
    _recorded_without_added_settings(api.search(config, out=other / "run", progress=False).study)
    with pytest.raises(ConfigError, match=r"distill.text_tower_step_scale = 1.0.*has 2.0"):
        api.search(config, out=other / "run", trials=2, progress=False)
    config.distill.text_tower_step_scale = 1.0  # what the old study did: it continues
    assert api.search(config, out=other / "run", trials=2, progress=False).already_done == 1


def test_the_pruner_compares_the_same_evaluation_of_each_trial(tmp_path, tiny_teacher_dir):
    """A student with its own text tower reports its k-th evaluation at the step where a plain
    trial has its k-th, also where the scale makes no whole number of steps."""
    path = write_experiment(tmp_path, tiny_teacher_dir, trials=2, extra="objectives: [{metric: accuracy}]")
    (tmp_path / "space.yaml").write_text(TEXT_TOWER_SPACE)
    config = load_experiment(path)
    config.distill.steps, config.distill.eval_every, config.distill.text_tower_step_scale = 16, 5, 2.5
    outcome = api.search(config, out=tmp_path / "run", progress=False)
    reported = {t.user_attrs["config"]["text"]["kind"]: list(t.intermediate_values) for t in _evaluated(outcome.study)}
    # the plain trial evaluates at steps 5, 10, 15; the text-tower one (40 steps) at 12, 24, 36
    assert reported == {"teacher": [5, 10, 15], "transformer": [5, 10, 15]}


@pytest.mark.filterwarnings("ignore:Heartbeat of storage", "ignore::optuna.exceptions.ExperimentalWarning")
def test_a_silent_trial_is_failed_after_the_experiments_grace_and_run_again_as_often_as_it_allows(
        tmp_path, tiny_teacher_dir, postgres_url):
    """join_study opens a shared study with the experiment's heartbeat, grace and retries: a running trial
    whose worker stops beating is failed once the grace has passed (not at Optuna's 3 beats) and
    queued again, twice (retries: 2, not the default 1), and not a third time."""
    from dime_nas.search.objective import TrialContext
    from dime_nas.search.study import join_study

    path = write_experiment(tmp_path, tiny_teacher_dir, extra="")
    path.write_text(path.read_text().replace("search: {", "search: {heartbeat_s: 1, grace_s: 2, retries: 2, "))
    config = load_experiment(path)
    ctx = TrialContext.for_experiment(config, None, None, progress=False)
    study, storage = join_study(config, ctx, postgres_url, run=RunDir.of(config, tmp_path / "run"))
    for _ in range(3):
        trial = study.ask()  # a worker starts a trial (then each queued copy), beats once, falls silent
        storage.record_heartbeat(trial._trial_id)
        time.sleep(2.6)  # past the 2 s grace, inside 3 beats of 1 s
        optuna.storages.fail_stale_trials(study)
    trials = study.get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.FAIL] * 3  # no fourth copy waits
    assert [t.system_attrs.get("failed_trial") for t in trials] == [None, 0, 0]  # both copies run trial 0 again


@pytest.mark.parametrize("local_workers, differ", [(1, False), (2, True)])
def test_workers_sharing_a_study_draw_their_own_students_and_a_lone_search_repeats_itself(
        tmp_path, tiny_teacher_dir, monkeypatch, local_workers, differ):
    """join_study seeds a shared study's sampler per worker (host and process), or workers would all
    propose the same students; a study of one worker keeps the experiment's seed, so it repeats."""
    from dime_nas.search import study as study_module
    from dime_nas.search.objective import TrialContext

    path = write_experiment(tmp_path, tiny_teacher_dir)
    path.write_text(path.read_text().replace("search: {", f"search: {{local_workers: {local_workers}, "))
    config = load_experiment(path)
    ctx = TrialContext.for_experiment(config, None, None, progress=False)
    proposals = []
    for pid in (101, 202):  # two workers: another process each
        monkeypatch.setattr(study_module.os, "getpid", lambda pid=pid: pid)
        study, _ = study_module.join_study(config, ctx, f"sqlite:///{tmp_path / f'{pid}.db'}",
                                           run=RunDir.of(config, tmp_path / f"run{pid}"))
        proposals.append([ctx.space.suggest(study.ask()).arch_key for _ in range(6)])
    assert (proposals[0] != proposals[1]) == differ, proposals


def test_a_claimed_architecture_takes_the_teachers_embedding_width_and_is_recorded_whole(tmp_path, tiny_teacher_dir):
    """claim_architecture suggests the student at the feature cache's embedding width (whatever the
    space file says) and records its architecture key, config and description on the trial, where
    other workers' reuse check and the report read them."""
    import dataclasses
    from types import SimpleNamespace

    from dime_nas.search.objective import TrialContext, claim_architecture

    config = load_experiment(write_experiment(tmp_path, tiny_teacher_dir))
    ctx = dataclasses.replace(TrialContext.for_experiment(config, None, None, progress=False),
                              cache=SimpleNamespace(embed_dim=48))  # the space file says 64
    study = optuna.create_study(directions=[o.direction for o in config.objectives])
    claimed = claim_architecture(study.ask(), ctx)
    assert claimed.embed_dim == 48
    recorded = TrialRecord.from_trial(study.get_trials()[0])
    assert recorded.arch_key == claimed.arch_key and recorded.config == claimed.to_dict()
    assert recorded.describe == claimed.describe()


def test_a_trial_waiting_for_its_running_twin_looks_for_dead_workers_meanwhile(tmp_path, tiny_teacher_dir,
                                                                               monkeypatch):
    """A trial whose architecture an earlier, still running trial holds waits for it rather than train
    it twice, and while it waits it runs the study's check for dead workers (``fail_stale``), or a
    twin whose worker was killed would be waited for for ever. Here the twin finishes meanwhile."""
    import dataclasses
    from types import SimpleNamespace

    from dime_nas.search import objective, record
    from dime_nas.search.objective import TrialContext, claim_architecture, run_trial

    waits = []

    def sleep(seconds):  # a wait that never ends fails the test instead of hanging it
        waits.append(seconds)
        assert len(waits) < 5, "waited for the twin without ever looking for dead workers"

    monkeypatch.setattr(objective, "time", SimpleNamespace(time=time.time, sleep=sleep))

    config = load_experiment(write_experiment(tmp_path, tiny_teacher_dir))
    study = optuna.create_study(directions=[o.direction for o in config.objectives])
    checks = []

    def fail_stale(s):  # the study loop's check; meanwhile the twin's worker finishes it
        checks.append(s)
        s.tell(first, [0.5, 1.0])

    ctx = dataclasses.replace(TrialContext.for_experiment(config, None, None, progress=False),
                              cache=SimpleNamespace(embed_dim=64), fail_stale=fail_stale)
    first = study.ask()
    claimed = claim_architecture(first, ctx)
    second = study.ask()
    record.write(second, arch_key=claimed.arch_key, config=claimed.to_dict(), describe=claimed.describe())
    assert run_trial(second, ctx, claimed) == (0.5, 1.0)  # the twin's result, nothing trained
    assert checks == [study] and ctx.train_steps_run == 0
    assert waits == [1.0]  # one poll interval, after the check


@pytest.mark.parametrize("ended", [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.PRUNED])
def test_a_twin_that_failed_or_was_pruned_is_not_waited_for(ended, monkeypatch):
    """Only a running or finished earlier trial of the same architecture counts: one that failed or was
    pruned never finishes, and waiting for it would stall the trial for ever."""
    from types import SimpleNamespace

    from dime_nas.search import objective, record

    def sleep(seconds):
        raise AssertionError(f"waited for a twin that had {ended.name}")

    monkeypatch.setattr(objective, "time", SimpleNamespace(time=time.time, sleep=sleep))
    study = optuna.create_study()
    twin = study.ask()
    record.write(twin, arch_key="k1")
    study.tell(twin, state=ended)
    later = study.ask()
    record.write(later, arch_key="k1")
    assert objective._find_previous(later, "k1") is None
