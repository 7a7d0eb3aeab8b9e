"""What a safety team needs from a flag: a callback when it rises, stopping generation on it, and a
JSON-lines event log (Python API, ``attrib stream``/``demo``/``serve``)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from attrib.cli import main
from attrib.shapes import make_example
from attrib.streaming.events import EventLog, read_events
from attrib.streaming.stream import Attributor, FinalEvent, SpanEvent
from metrics.trajectory import (
    OnlineTrajectory,
    TortuosityFlagger,
    concentration,
    effect_vectors,
    net_displacement,
    path_length,
    tortuosity,
)


@pytest.fixture(scope="module")
def attributor() -> Attributor:
    return Attributor.load()


class AtSpan:
    """A flagger that rises on a given span (0-based) of each chain."""

    def __init__(self, at: int) -> None:
        self.at = at
        self.resets = 0
        self.reset()

    def reset(self) -> None:
        self.n = 0
        self.resets += 1

    def update(self, scores: np.ndarray) -> bool:
        self.n += 1
        return self.n > self.at


def _always_flagger(tmp_path: Path) -> Path:
    """A real TortuosityFlagger whose threshold any wandering chain of 3 spans crosses."""
    fl = TortuosityFlagger(fpr=0.5, min_spans=3)
    fl.fit([np.random.default_rng(0).random((5, 8)) for _ in range(4)])
    d = fl.to_dict()
    d["threshold"] = 1.0 + 1e-6
    p = tmp_path / "flagger.json"
    p.write_text(json.dumps(d))
    return p


def test_online_trajectory_equals_the_whole_chain_functions() -> None:
    rng = np.random.default_rng(3)
    scores = rng.normal(size=(6, 10))
    scores[2] = 0.0  # a span with no distribution: concentration NaN
    tr = OnlineTrajectory(top=4)
    e = effect_vectors(scores, 4)
    for i in range(len(scores)):
        got = tr.update(scores[i])
        pre = e[: i + 1]
        assert got["n_spans"] == i + 1
        assert got["path_length"] == pytest.approx(path_length(pre), abs=1e-12)
        assert got["displacement"] == pytest.approx(net_displacement(pre), abs=1e-12)
        want = tortuosity(pre)
        assert (np.isnan(got["tortuosity"]) and np.isnan(want)) or got["tortuosity"] == pytest.approx(want)
        c = concentration(scores[i])[0]
        assert (np.isnan(got["concentration"]) and np.isnan(c)) or got["concentration"] == pytest.approx(c)
    # By hand: a one-hot span is fully concentrated; a straight back-and-forth path has tortuosity 2 + ...
    tr = OnlineTrajectory(top=2, normalize=False)
    a, b = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    assert tr.update(a)["concentration"] == 1.0
    assert tr.update(b)["tortuosity"] == 1.0
    third = tr.update(a)  # back to the start: length 2 * sqrt 2, displacement 0 -> floored
    assert third["path_length"] == pytest.approx(2 * np.sqrt(2)) and third["displacement"] == 0.0
    assert third["tortuosity"] > 1e5
    # Ties at the top-k cut keep the lower index, as effect_vectors: [1, -1, 1, .5] keeps regions 0 and 1.
    tied = np.array([[1.0, -1.0, 1.0, 0.5], [0.5, 1.0, -1.0, 1.0]])
    tr = OnlineTrajectory(top=2)
    tr.update(tied[0])
    assert tr.update(tied[1])["path_length"] == pytest.approx(path_length(effect_vectors(tied, 2)), abs=1e-12)
    with pytest.raises(ValueError, match="K = 3"):
        tr.update(np.ones(3))
    with pytest.raises(ValueError, match="NaN"):
        OnlineTrajectory().update(np.array([1.0, np.nan]))
    # the stream passes its scores as a list of floats: the same statistics, the same refusals
    arr, lst = OnlineTrajectory(top=4), OnlineTrajectory(top=4)
    for row in scores:
        got, want = lst.update(row.tolist()), arr.update(row)
        assert got.keys() == want.keys()
        assert all(got[k] == want[k] or (np.isnan(got[k]) and np.isnan(want[k])) for k in got)
    with pytest.raises(ValueError, match="2 NaN/inf"):
        OnlineTrajectory().update([1.0, float("nan"), float("inf")])


def test_on_flag_fires_once_on_the_iterating_thread_before_its_event(attributor: Attributor) -> None:
    ex = make_example("test", 3)
    fl = AtSpan(1)
    seen: list[tuple[str, int]] = []
    threads: list[int] = []

    def on_flag(ev: SpanEvent) -> None:
        seen.append(("callback", ev.index))
        threads.append(threading.get_ident())

    res = None
    for ev in attributor.stream(ex.image(), ex.question.text, flagger=fl, on_flag=on_flag):
        if isinstance(ev, SpanEvent):
            seen.append(("event", ev.index))
            assert ev.flagged == (ev.index >= 1)
            assert ev.trajectory["n_spans"] == ev.index + 1
        else:
            res = ev.result
    assert res is not None and res.flagged_at == 1 and not res.stopped_on_flag
    assert seen[:4] == [("event", 0), ("callback", 1), ("event", 1), ("event", 2)]
    assert sum(1 for k, _ in seen if k == "callback") == 1
    assert threads == [threading.get_ident()]
    # The events' trajectory statistics are those of the result's chain.
    e = effect_vectors(res.scores, 32)
    for s in res.spans:
        assert s.trajectory["path_length"] == pytest.approx(path_length(e[: s.index + 1]), rel=1e-6)
    # The same flagger serves the next stream from a fresh chain.
    again = attributor.stream(ex.image(), ex.question.text, flagger=fl).run()
    assert again.flagged_at == 1 and fl.resets == 3  # construction, then one reset per stream


def test_stop_on_flag_ends_generation_early_with_a_final_event(attributor: Attributor) -> None:
    ex = make_example("test", 3)
    full = attributor.stream(ex.image(), ex.question.text, max_new_tokens=300, min_new_tokens=300).run()
    assert full.generated_tokens == 300 and len(full.spans) >= 4
    events = list(
        attributor.stream(
            ex.image(), ex.question.text, max_new_tokens=300, min_new_tokens=300, flagger=AtSpan(1), stop_on_flag=True
        )
    )
    assert isinstance(events[-1], FinalEvent)
    res = events[-1].result
    assert res.stopped_on_flag and res.flagged_at == 1
    # It stopped within a few tokens of the flagging span's end (the worker scores a span while the next
    # tokens are generated), far before the budget; the trace is the full run's prefix.
    assert res.generated_tokens < full.spans[3].end < 300
    assert res.generated_ids == full.generated_ids[: res.generated_tokens]
    assert not attributor.lock.locked()


def test_callback_and_stop_need_a_flagger(attributor: Attributor) -> None:
    ex = make_example("test", 0)
    with pytest.raises(ValueError, match="needs a flagger"):
        attributor.stream(ex.image(), ex.question.text, stop_on_flag=True)
    with pytest.raises(ValueError, match="needs a flagger"):
        attributor.stream(ex.image(), ex.question.text, on_flag=print)


def test_an_exception_in_on_flag_ends_the_stream_and_frees_the_model(attributor: Attributor) -> None:
    ex = make_example("test", 3)

    def boom(ev: SpanEvent) -> None:
        raise RuntimeError("page the on-call")

    with pytest.raises(RuntimeError, match="page the on-call"):
        attributor.stream(ex.image(), ex.question.text, flagger=AtSpan(0), on_flag=boom).run()
    assert not attributor.lock.locked()


def test_event_log_lines(tmp_path: Path) -> None:
    log_path = tmp_path / "sub" / "ev.jsonl"
    ev = SpanEvent(
        index=0,
        text="a",
        start=0,
        end=2,
        scores=np.array([0.5, -0.25], np.float32),
        top_regions=[(0, 0.5)],
        span_end_s=0.1,
        emitted_s=0.2,
        flagged=True,
        trajectory={"n_spans": 1.0, "tortuosity": float("nan")},
    )

    class S:  # what EventLog.start reads of a stream
        prompt = "q <b>"
        system = None
        image = __import__("PIL.Image", fromlist=["Image"]).new("RGB", (4, 3))
        partition = type("P", (), {"k": 2})()

    with EventLog(log_path) as log:
        sid = log.start(S(), model="m", stream_id="s1")
        log.event(sid, ev)
        log.event(sid, ev)
        log.error(sid, "boom\nwith a traceback")
    recs = read_events(log_path)
    assert [r["type"] for r in recs] == ["start", "span", "span", "error"]
    assert recs[0]["image_size"] == [4, 3] and recs[0]["prompt"] == "q <b>" and recs[0]["n_regions"] == 2
    assert recs[1]["scores"] == [0.5, -0.25] and recs[1]["trajectory"]["tortuosity"] is None
    assert [r["flag_rose"] for r in recs[1:3]] == [True, False]  # rose once
    assert recs[3]["message"] == "boom with a traceback"
    assert all(r["stream"] == "s1" for r in recs) and recs[1]["t"] >= 0
    # Appending: a second log adds; a cut-short last line is skipped; garbage in the middle is refused.
    with EventLog(log_path) as log:
        log.error(log.start(S(), stream_id="s2"), "x")
    with log_path.open("a") as f:
        f.write('{"type": "span", "stre')
    assert [r["stream"] for r in read_events(log_path)] == ["s1"] * 4 + ["s2"] * 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a": 1}\nnot json\n{"b": 2}\n')
    with pytest.raises(ValueError, match="line 2"):
        read_events(bad)
    with pytest.raises(ValueError, match="closed"):
        log.error("s3", "after close")


def _one_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(list(argv)) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1
    return lines[0]


def test_stream_cli_logs_events_and_stops_on_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ex = make_example("test", 3)
    img = tmp_path / "img.png"
    ex.image().save(img)
    flagger = _always_flagger(tmp_path)
    log, js = tmp_path / "events.jsonl", tmp_path / "res.json"
    argv = ["stream", "--image", str(img), "--prompt", ex.question.text, "--no-verify", "--flagger", str(flagger)]
    assert main([*argv, "--events", str(log), "--stop-on-flag", "--json", str(js)]) == 0
    res = json.loads(js.read_text())
    recs = read_events(log)
    assert [r["type"] for r in recs] == ["start"] + ["span"] * len(res["spans"]) + ["final"]
    assert recs[0]["flagger"]["threshold"] == pytest.approx(1.0 + 1e-6)
    spans = recs[1:-1]
    assert [s["scores"] for s in spans] == [s["scores"] for s in res["spans"]]
    assert [s["flag_rose"] for s in spans].count(True) == 1
    assert res["stopped_on_flag"] and recs[-1]["stopped_on_flag"] and recs[-1]["flagged_at"] == res["flagged_at"]
    assert "failure flag rose" in capsys.readouterr().out
    times = [r["t"] for r in recs]
    assert times == sorted(times)
    # Configuration errors, refused in one line before any work.
    assert "--flagger none" in _one_error(capsys, *argv[:-2], "--flagger", "none", "--stop-on-flag")
    blocked = tmp_path / "file"
    blocked.write_text("")
    msg = _one_error(capsys, *argv, "--events", str(blocked / "events.jsonl"))
    assert "--events" in msg and "cannot append" in msg


def test_serve_appends_every_stream_to_the_event_log(attributor: Attributor, tmp_path: Path) -> None:
    from test_serve import _events, _post_stream, running

    log_path = tmp_path / "serve.jsonl"
    with EventLog(log_path) as log, running(attributor, events=log, flagger=AtSpan(0), stop_on_flag=True) as srv:
        for _ in range(2):
            status, body = _post_stream(srv, "test-3", "How many circles are there?")
            assert status == 200
            final: Any = _events(body)[-1]
            assert final[0] == "final" and final[1]["stopped_on_flag"]
    recs = read_events(log_path)
    starts = [r for r in recs if r["type"] == "start"]
    assert len(starts) == 2 and starts[0]["stream"] != starts[1]["stream"]
    assert all(s["client"] == "127.0.0.1" for s in starts)
    for s in starts:
        mine = [r for r in recs if r["stream"] == s["stream"]]
        assert mine[-1]["type"] == "final" and mine[-1]["stopped_on_flag"] and mine[-1]["flagged_at"] == 0
    with pytest.raises(ValueError, match="needs a failure flagger"):
        running(attributor, stop_on_flag=True).__enter__()
