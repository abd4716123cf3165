"""The agent's reading of a measure request, in-process: every field at its edges, the
defaults, and the status and message of each refusal (400 naming the field; 413 when the
request or its inputs are too big)."""
from __future__ import annotations

import asyncio

import pytest

from dime_nas.agent.app import _FIELDS, MAX_REQUEST_BYTES, _json, _Refused, _small_body, measure_job

MODEL = "ab" * 32
MEMORY = 10_000


def _body(**changes) -> dict:
    return {"model": MODEL, "inputs": {"image": [1, 3, 8, 8]}, **changes}


def _refusal(body, memory: int = MEMORY) -> tuple[int, str]:
    with pytest.raises(_Refused) as err:
        measure_job(body, memory)
    return err.value.status, str(err.value)


def test_a_minimal_request_gets_every_default():
    assert measure_job(_body(), MEMORY) == {
        "model": MODEL, "providers": ["CPUExecutionProvider"], "threads": 1, "batch": 1, "warmup": 10,
        "runs": 50, "sessions": 1, "inputs": {"image": [1, 3, 8, 8]}}


@pytest.mark.parametrize("name", sorted(_FIELDS))
def test_each_number_is_accepted_at_its_bounds_and_refused_past_them(name):
    low, high, _ = _FIELDS[name]
    for value in (low, high):
        changes = {name: value, **({"runs": value} if name == "sessions" else {})}
        if name == "batch":
            changes["inputs"] = {"image": [value]}
        job = measure_job(_body(**changes), 10**9)
        assert job[name] == value
    for value in (low - 1, high + 1, float(low + 1), True, "2", None):
        status, message = _refusal(_body(**{name: value}), 10**9)
        assert status == 400
        assert message == f"bad measure request: {name} must be an integer in [{low}, {high}], got {value!r}"


def test_sessions_may_equal_runs_but_not_exceed_them():
    assert measure_job(_body(runs=3, sessions=3), MEMORY)["sessions"] == 3
    assert _refusal(_body(runs=3, sessions=4)) == (
        400, "bad measure request: sessions (4) must not exceed runs (3)")


@pytest.mark.parametrize("body, words", [
    ([1, 2], "the body must be a JSON object"),
    (_body(colour="red", size=3), "unknown field(s) ['colour', 'size']"),
    ({"inputs": {"image": [1]}}, "model: a model is named by the SHA-256 of its bytes"),
    (_body(model="AB" * 32), "model: a model is named by the SHA-256"),
    (_body(providers=[]), "providers must be a non-empty list of names"),
    (_body(providers="CPUExecutionProvider"), "providers must be a non-empty list of names"),
    (_body(providers=["CPUExecutionProvider", ""]), "providers must be a non-empty list of names"),
    (_body(providers=[3]), "providers must be a non-empty list of names"),
    (_body(inputs=None), 'inputs must map each input name to its shape, e.g. {"image": [1, 3, 224, 224]}'),
    (_body(inputs={}), "inputs must map each input name to its shape"),
    (_body(inputs=[[1, 2]]), "inputs must map each input name to its shape"),
    (_body(inputs={"image": []}), "inputs['image'] must be a non-empty list of positive integers, got []"),
    (_body(inputs={"image": [1, 0]}), "inputs['image'] must be a non-empty list of positive integers"),
    (_body(inputs={"image": [1, -2]}), "inputs['image'] must be a non-empty list of positive integers"),
    (_body(inputs={"image": [1, 2.0]}), "inputs['image'] must be a non-empty list of positive integers"),
    (_body(inputs={"image": [True, 2]}), "inputs['image'] must be a non-empty list of positive integers"),
    (_body(inputs={"image": "1x3"}), "inputs['image'] must be a non-empty list of positive integers"),
    (_body(inputs={"image": [2, 3]}), "inputs['image'] starts with 2, not the batch size 1"),
    (_body(batch=2, inputs={"image": [2, 3], "text": [1, 5]}), "inputs['text'] starts with 1, not the batch size 2"),
])
def test_a_bad_request_is_refused_400_naming_what_is_wrong(body, words):
    status, message = _refusal(body)
    assert status == 400 and message.startswith("bad measure request: ") and words in message


def test_a_long_bad_shape_is_quoted_short():
    status, message = _refusal(_body(inputs={"image": [1, 0] + [7] * 500}))
    assert status == 400 and len(message) == 300 and message.endswith("7, 7")


def test_a_long_input_name_with_the_wrong_batch_is_quoted_short():
    status, message = _refusal(_body(inputs={"x" * 500: [2, 3]}))
    assert status == 400 and len(message) == 300 and message.startswith("bad measure request: inputs['xxx")


def test_inputs_up_to_the_memory_limit_are_accepted_and_one_element_more_is_413():
    fits = {"image": [1, 40, 50], "text": [1, 2000]}  # 4,000 elements in all
    assert measure_job(_body(inputs=fits), 4_000)["inputs"] == fits
    status, message = _refusal(_body(inputs={**fits, "text": [1, 2001]}), 4_000)
    assert status == 413
    assert message == ("the inputs hold 4001 elements: over the agent's memory limit per measurement "
                       "(4000 bytes) even at one byte each")


@pytest.mark.parametrize("raw, words", [
    (b"{not json", "bad measure request: Expecting property name"),
    (b"\xff\xfe", "bad measure request: "),
    (b"[" * 100_000 + b"]" * 100_000, "bad measure request: JSON nested too deeply"),
])
def test_a_body_that_is_not_json_is_refused_400(raw, words):
    with pytest.raises(_Refused) as err:
        _json(raw)
    assert err.value.status == 400 and str(err.value).startswith(words)


class _Streamed:
    """A request whose body arrives in the given chunks."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = chunks

    async def stream(self):
        for chunk in self.chunks:
            yield chunk


def test_a_request_body_up_to_its_limit_is_read_and_one_byte_more_is_413():
    half = b"x" * (MAX_REQUEST_BYTES // 2)
    assert asyncio.run(_small_body(_Streamed(half, half))) == half + half
    with pytest.raises(_Refused) as err:
        asyncio.run(_small_body(_Streamed(half, half, b"y", b"never read")))
    assert err.value.status == 413 and str(err.value) == f"a measure request is at most {MAX_REQUEST_BYTES} bytes"
