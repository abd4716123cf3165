"""The remote latency backend against agents on loopback: agreement with a local
measurement, several agents per target, unreachable agents, CLI and trial records."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import yaml

from agent_fixtures import loopback_agent
from dime_nas.cost import remote
from dime_nas.cost.onnx_export import ExportedTower
from dime_nas.cost.local import OnnxRuntimeBackend
from dime_nas.cost.remote import AgentError, RemoteBackend, RemoteOptions
from dime_nas.cost.targets import Target, load_targets
from test_agent import matmul_model

LOCAL = Target(name="local-1t", description="this machine", intra_op_threads=1, warmup=5, runs=40)


def remote_target(*agents, urls: tuple[str, ...] | None = None, token_file: str | None = None,
                  **changes) -> Target:
    options = RemoteOptions(urls or tuple(a if isinstance(a, str) else a.url for a in agents),
                            token_file=token_file or str(next(a for a in agents if not isinstance(a, str)).token_file))
    fields = dict(name="board", description="boards on loopback", backend="remote", options=options,
                  intra_op_threads=1, warmup=5, runs=40)
    return Target(**{**fields, **changes})


def exported_chain(tmp: Path, layers: int = 8, dim: int = 256) -> ExportedTower:
    path = tmp / f"chain{layers}x{dim}.onnx"
    path.write_bytes(matmul_model(layers=layers, dim=dim))
    return ExportedTower(tower="image", path=path, input_name="image", input_dtype="float32",
                         input_shape=("batch", 64, dim), output_name="embedding", opset=18, exporter="onnx.helper",
                         parity_max_abs_diff=0.0, file_bytes=path.stat().st_size, export_seconds=0.0)


@pytest.fixture(scope="module")
def agents(tmp_path_factory):
    root = tmp_path_factory.mktemp("agents")
    token = "same-token-for-both-boards"
    with (loopback_agent(root / "a", "--label", "board=a", token=token) as a,
          loopback_agent(root / "b", "--label", "board=b", token=token) as b):
        yield a, b


@pytest.fixture(scope="module")
def agent(agents):
    return agents[0]


def test_remote_numbers_agree_with_a_local_measurement(agent, tmp_path):
    # Tolerance: a factor of 1.5 between the best of 3 alternating medians. The machine is shared
    # (medians of small models drift 20-40% between runs); the far larger model checks the scale.
    exported = exported_chain(tmp_path)
    target = remote_target(agent)
    local, far = [], []
    for _ in range(3):
        local.append(OnnxRuntimeBackend().measure(exported, dataclasses.replace(LOCAL)).median_ms)
        far.append(RemoteBackend().measure(exported, target).median_ms)
    ratio = min(far) / min(local)
    assert 1 / 1.5 <= ratio <= 1.5, (local, far)
    big = RemoteBackend().measure(exported_chain(tmp_path, layers=8, dim=1024), target).median_ms
    assert big > 4 * min(far)  # 16x the MACs


def test_measurement_records_the_device_and_what_ran(agent, tmp_path):
    m = RemoteBackend().measure(exported_chain(tmp_path, layers=2), remote_target(agent))
    assert m.backend == "remote" and m.providers == ["CPUExecutionProvider"] and m.runs == 40
    assert m.machine["agent"] == agent.url and m.machine["labels"] == {"board": "a"}
    assert m.machine["onnxruntime"] and m.machine["cpu_count"] >= 1


def test_each_model_is_sent_once(agent, tmp_path, monkeypatch):
    exported = exported_chain(tmp_path, layers=3)
    sent = []
    real = remote.AgentClient._request

    def spy(self, method, path, **kw):
        sent.append(method)
        return real(self, method, path, **kw)

    monkeypatch.setattr(remote.AgentClient, "_request", spy)
    for _ in range(3):
        RemoteBackend().measure(exported, remote_target(agent, runs=3))
    assert sent.count("PUT") == 1 and sent.count("HEAD") == 3


def test_measurements_are_spread_over_the_targets_agents(agents, tmp_path):
    a, b = agents
    target = remote_target(a, b, runs=3)
    boards = [RemoteBackend().measure(exported_chain(tmp_path, layers=1), target).machine["labels"]["board"]
              for _ in range(4)]
    assert sorted(boards) == ["a", "a", "b", "b"]


def test_an_unreachable_agent_is_skipped_and_named_when_none_answers(agent, tmp_path, monkeypatch):
    monkeypatch.setattr(remote, "BACKOFF_S", 0.01)
    dead = "http://127.0.0.1:9"  # discard port: nothing listens
    exported = exported_chain(tmp_path, layers=1)
    for _ in range(2):  # whichever comes first in the rotation, the live board measures
        m = RemoteBackend().measure(exported, remote_target(dead, agent, runs=3))
        assert m.machine["agent"] == agent.url
    with pytest.raises(AgentError, match=r"no agent could be reached.*127\.0\.0\.1:9 unreachable after 4 attempt"):
        RemoteBackend().measure(exported, remote_target(dead, agent, runs=3, urls=(dead,)))


def test_a_wrong_token_is_a_clear_error(agent, tmp_path):
    bad = tmp_path / "bad-token"
    bad.write_text("not-the-token-at-all")
    with pytest.raises(AgentError, match="refused the token"):
        RemoteBackend().measure(exported_chain(tmp_path, layers=1), remote_target(agent, token_file=str(bad)))


def test_remote_target_fields_are_checked(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump({"b": {"description": "x", "backend": "remote",
                                          "options": {"url": "http://h:1", "token_env": "T"}}}))
    assert load_targets(path)["b"].options == RemoteOptions(("http://h:1",), token_env="T")
    for fields, problem in [({"backend": "remote", "options": {"token_env": "T"}}, "needs the option url"),
                            ({"backend": "remote", "options": {"url": "h:1", "token_env": "T"}}, "option url"),
                            ({"backend": "remote", "options": {"url": "http://h:1"}}, "exactly one of the options"),
                            ({"backend": "remote", "options": {"url": "http://h:1", "token_env": "T", "tokn": 1}},
                             "unknown option.*tokn"),
                            ({"options": {"url": "http://h:1"}}, "backend 'onnxruntime' takes no options"),
                            # the keys of a file written before they moved under `options`
                            ({"backend": "remote", "url": "http://h:1", "token_env": "T"},
                             "token_env, url belong.* under `options:`")]:
        path.write_text(yaml.safe_dump({"b": {"description": "x", **fields}}))
        with pytest.raises(ValueError, match=problem):
            load_targets(path)


def test_a_study_recorded_with_remote_fields_at_the_top_reads_as_now():
    from dime_nas.cost.targets import upgrade_recorded

    now = Target(name="b", description="x", backend="remote", options={"url": "http://h:1", "token_env": "T"})
    before = {k: v for k, v in now.to_dict().items() if k != "options"}
    assert upgrade_recorded({**before, "urls": ["http://h:1"], "token_env": "T", "token_file": None}) == now.to_dict()
    local = Target(name="l", description="x")
    assert upgrade_recorded({**local.to_dict(), "urls": [], "token_env": None, "token_file": None}) == local.to_dict()


def _targets_file(tmp_path: Path, *agents) -> Path:
    path = tmp_path / "boards.yaml"
    t = remote_target(*agents).to_dict()
    t.pop("name")
    path.write_text(yaml.safe_dump({"board": t}))
    return path


def test_cli_targets_shows_each_agents_device_and_latency_measures_there(agent, tmp_path, capsys):
    from dime_nas.cli import main
    from dime_nas.student import StudentConfig, VisionTowerConfig

    path = _targets_file(tmp_path, agent, "http://127.0.0.1:9")
    assert main(["targets", "--file", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"agent {agent.url}: " in out and "[board=a]" in out and "cores" in out
    assert "agent http://127.0.0.1:9: " in out and "unreachable" in out
    student = tmp_path / "s.json"
    student.write_text(StudentConfig(embed_dim=32, vision=VisionTowerConfig(
        kind="vit", image_size=32, layers=1, width=32, heads=2, mlp_ratio=2.0, patch_size=8)).to_json())
    path = _targets_file(tmp_path, agent)
    assert main(["latency", str(student), "--target", "board", "--targets-file", str(path), "--runs", "5",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["image"]["backend"] == "remote" and result["image"]["machine"]["agent"] == agent.url


def _trial_context(target: Target, tmp: Path):
    from dime_nas.config import Objective
    from dime_nas.cost.meter import CostMeter
    from dime_nas.search.evaluators import ShortDistill
    from dime_nas.search.objective import TrialContext
    from dime_nas.space import SearchSpace
    from conftest import TEST_SPACE

    space = tmp / "space.yaml"
    return TrialContext(SimpleNamespace(latency_predictor=None, search=SimpleNamespace(prune=False)),
                        SearchSpace.load(_write(space, TEST_SPACE)), SimpleNamespace(embed_dim=64),
                        CostMeter(target, None), ShortDistill(), objectives=[Objective("accuracy"), Objective("latency_ms")])


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_trial_records_the_device_of_each_measurement(agent, tmp_path):
    from dime_nas.cost.meter import CostMeter
    from dime_nas.student import StudentConfig, VisionTowerConfig

    config = StudentConfig(embed_dim=64, vision=VisionTowerConfig(kind="vit", image_size=32, layers=1, width=32,
                                                                  heads=2, mlp_ratio=2.0, patch_size=8))
    cost = CostMeter(remote_target(agent, runs=3), None).measure(config)
    device = cost["per_tower"]["image"]["device"]
    assert device["agent"] == agent.url and device["labels"] == {"board": "a"}
    assert cost["latency_source"] == "measured" and cost["latency_ms"] > 0


def test_unreachable_agent_fails_the_trial_not_the_study(monkeypatch, tmp_path):
    from dime_nas.search.storage import ClaimLock
    from dime_nas.search.study import _counts
    from dime_nas.search.worker import work_on

    monkeypatch.setattr(remote, "BACKOFF_S", 0.01)
    monkeypatch.setenv("BOARD_TOKEN", "x" * 20)
    target = Target(name="board", description="gone", backend="remote", runs=3, warmup=1,
                    options={"url": "http://127.0.0.1:9", "token_env": "BOARD_TOKEN"})
    ctx = _trial_context(target, tmp_path)
    ctx.experiment.distill = SimpleNamespace(device="cpu")
    study = optuna.create_study(directions=["maximize", "minimize"])
    work_on(study, ctx, ClaimLock("memory", None, "s"), want=2, cap=4, timeout_s=None, counts=_counts,
            fail_stale=lambda s: None)  # each failed trial is recorded and the search goes on
    trials = study.get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.FAIL] * 2
    assert all("agent http://127.0.0.1:9 unreachable" in t.user_attrs["reason"] for t in trials)
