"""Training survives a real SIGKILL at any instant and resumes to bit-identical weights.

Checkpoints are crash-safe (see ``attrib.shapes.train``): each is written to a
temporary directory, fsynced, renamed to ``step-N``, and made current by
atomically renaming a symlink over ``<out>.ckpt``. These tests kill real
training processes with ``SIGKILL`` (no Python exception, no ``finally``) at
random moments and, deterministically, at every named point of the
checkpoint-saving sequence, and check after each kill that the checkpoint named
on disk is complete and equal, byte for byte, to the uninterrupted run's, that
the rerun resumes from exactly that step, and that the final weights equal the
uninterrupted run's.

Speed: starting Python and importing torch and transformers takes about 4 s on
the 2-core machine, and building the benchmark vocabulary 2.4 s, against 0.3 s
for the tiny training run itself; so the runs are forked from a "zygote"
process that has done both once. The zygote (not the test) delivers the random
kills, to its own unreaped child, so a kill never reaches a recycled process id.
The deterministic kills are made by the child itself from
``attrib.shapes.train._checkpoint_hook``, the library's no-op fault-injection
seam, which the child replaces.
"""

from __future__ import annotations

import json
import os
import random
import re
import select
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import attrib.shapes.train as train_mod

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the kill tests fork training processes (POSIX only)")

ROOT = Path(__file__).resolve().parent.parent
STEPS = 6  # checkpoints after steps 1..5 (every step), the final directory after step 6
N_RANDOM = 20  # kills at random moments, on top of the 9 at named points

_ZYGOTE = textwrap.dedent(
    r'''
    """Fork server: one JSON job a line on stdin, one JSON reply a line on stdout."""
    import json, os, shutil, signal, sys, time, traceback
    from pathlib import Path

    import torch  # noqa: F401  (imported once, before any fork)

    import attrib.shapes.train as T
    from attrib.shapes.model import ModelSize

    CFG = T.TrainConfig(size=ModelSize.tiny(), **json.loads(sys.argv[1]))
    WORDS = T.benchmark_words()  # 2.4 s, the bulk of a tiny run: computed once, before forking
    T.benchmark_words = lambda: list(WORDS)


    def write_json(path, obj):
        tmp = f"{path}.part"
        Path(tmp).write_text(json.dumps(obj))
        os.replace(tmp, path)


    def child(job):
        os.dup2(2, 1)  # stdout is the protocol channel
        out, result, stages = Path(job["out"]), job["result"], []
        resume = T._maybe_resume

        def recording_resume(*args):
            got = resume(*args)
            write_json(result, {"resumed_from": got[0]})
            return got

        def hook(stage):
            stages.append(stage)
            if job.get("copy_to") and stage == "save:switched":
                current = Path(os.path.realpath(out.with_name(out.name + ".ckpt")))
                shutil.copytree(current, Path(job["copy_to"]) / current.name)
            if stage == job.get("stage") and stages.count(stage) == job.get("nth", 1):
                os.kill(os.getpid(), signal.SIGKILL)

        T._maybe_resume = recording_resume
        T._checkpoint_hook = hook
        res = T.train(CFG, out)
        write_json(result, {"resumed_from": res.resumed_from, "stages": stages, "done": True})


    for line in sys.stdin:
        job = json.loads(line)
        t0 = time.monotonic()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                child(job)
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stderr.flush()
                os._exit(code)
        delay, killed = job.get("delay"), False
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if delay is not None and time.monotonic() - t0 >= delay:
                os.kill(pid, signal.SIGKILL)  # our own child, not yet reaped: its pid cannot be reused
                _, status = os.waitpid(pid, 0)
                break
            time.sleep(0.002)
        reply = {
            "code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
            "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
            "seconds": time.monotonic() - t0,
        }
        print(json.dumps(reply), flush=True)
    '''
)


class _Zygote:
    """The fork server, started once per test (about 4 s of imports)."""

    def __init__(self, work: Path, cfg: dict[str, Any]) -> None:
        script = work / "zygote.py"
        script.write_text(_ZYGOTE)
        self.log = work / "zygote.log"
        self._err = self.log.open("w")
        env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
        self.proc = subprocess.Popen(
            [sys.executable, str(script), json.dumps(cfg)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            text=True,
            cwd=ROOT,
            env=env,
        )
        self.result = work / "result.json"

    def run(self, out: Path, *, timeout: float = 180.0, **job: Any) -> dict[str, Any]:
        """Run one training job; the reply, plus what the child recorded (``resumed_from``, ...)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.result.unlink(missing_ok=True)
        self.proc.stdin.write(json.dumps({"out": str(out), "result": str(self.result), **job}) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        assert line, f"the zygote did not answer; its log:\n{self.tail()}"
        reply: dict[str, Any] = json.loads(line)
        if self.result.is_file():
            reply.update(json.loads(self.result.read_text()))
        return reply

    def tail(self) -> str:
        self._err.flush()
        return self.log.read_text()[-4000:]

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._err.close()


def _committed(out: Path, reference: Path) -> int:
    """The step of the checkpoint on disk that a rerun must resume from, checked against the reference run.

    Read independently of the library: the ``step-`` directory the ``.ckpt`` symlink names, else
    the newest ``step-`` directory (each is complete by construction), else none (step 0). The
    checkpoint's weights and optimizer state must equal, byte for byte, the uninterrupted run's
    at that step.
    """
    link = out.with_name(out.name + ".ckpt")
    store = out.with_name(out.name + ".ckpt.d")
    where = None
    if link.is_symlink() and (link.parent / os.readlink(link) / "meta.json").is_file():
        where = link.parent / os.readlink(link)
    elif store.is_dir():
        steps = sorted(p for p in store.iterdir() if re.fullmatch(r"step-\d{8}", p.name) and (p / "meta.json").exists())
        where = steps[-1] if steps else None
    if where is None:
        return 0
    ref = reference / where.name
    for name in ("model.safetensors", "optimizer.pt"):
        assert (where / name).read_bytes() == (ref / name).read_bytes(), f"{where / name} differs from the reference"
    meta = json.loads((where / "meta.json").read_text())
    assert meta["digests"] == json.loads((ref / "meta.json").read_text())["digests"]
    return int(meta["step"])


def _expected_after(stage: str, nth: int, start: int) -> int:
    """The committed step after a kill at the ``nth`` ``stage`` of a run that resumed from ``start``."""
    if stage.startswith(("final:", "remove:")):
        return STEPS - 1
    saved = start + nth  # checkpoints every step
    return saved if stage in ("save:switched", "save:done") else saved - 1


def _finish(z: _Zygote, out: Path, committed: int, reference: dict[str, Any], r: dict[str, Any] | None = None) -> None:
    """Run ``out`` to the end (unless ``r`` is that run) and compare it with the uninterrupted run."""
    r = z.run(out) if r is None else r
    assert r["code"] == 0 and r.get("done"), z.tail()
    assert r["resumed_from"] == committed
    log = json.loads((out / "train_log.json").read_text())
    assert log["final_digest"] == reference["final_digest"]
    assert log["checkpoint_digests"] == reference["checkpoint_digests"]
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]


def test_sigkill_anywhere_resumes_to_bit_identical_weights(tmp_path: Path) -> None:
    cfg = {"steps": STEPS, "batch_size": 1, "ckpt_every": 1, "warmup": 2, "compile": False, "workers": 0, "threads": 1}
    z = _Zygote(tmp_path, cfg)
    try:
        refck = tmp_path / "ref-ckpts"
        refck.mkdir()
        ref = z.run(tmp_path / "ref" / "m", copy_to=str(refck))
        assert ref["code"] == 0 and ref.get("done"), z.tail()
        assert set(ref["stages"]) == set(train_mod._CHECKPOINT_STAGES)  # every stage is reached, and is killed at below
        assert sorted(p.name for p in refck.iterdir()) == [f"step-{s:08d}" for s in range(1, STEPS)]
        reference = json.loads((tmp_path / "ref" / "m" / "train_log.json").read_text())
        assert [s for s, _ in reference["checkpoint_digests"]] == list(range(1, STEPS))

        # Deterministic kills: at every stage of saving (one leaves a newer, complete checkpoint that was never
        # made current; another a complete temporary directory), of the final write and of the checkpoint's
        # removal. The same run is resumed each time.
        out = tmp_path / "det" / "m"
        committed = 0
        plan = [
            ("save:model", 1),
            ("save:renamed", 2),  # step-2 complete on disk but not current: the rerun must take step 1
            ("save:synced", 1),
            ("save:switched", 2),
            ("save:begin", 1),
            ("save:done", 2),
            ("final:written", 1),
            ("final:replaced", 1),
            ("remove:unlinked", 1),  # link gone, store left: the newest step- directory is taken
        ]
        assert {s for s, _ in plan} == set(train_mod._CHECKPOINT_STAGES)
        for stage, nth in plan:
            r = z.run(out, stage=stage, nth=nth)
            assert r["signal"] == signal.SIGKILL, (stage, r, z.tail())
            assert r["resumed_from"] == committed, (stage, r)
            committed = _committed(out, refck)
            assert committed == _expected_after(stage, nth, r["resumed_from"]), stage
            if stage == "final:written":
                assert not out.exists()
            if stage == "final:replaced":
                assert json.loads((out / "train_log.json").read_text())["final_digest"] == reference["final_digest"]
        _finish(z, out, committed, reference)

        # Random kills (seeded delays over a fresh run's duration); a run that ends first closes its chain.
        rng = random.Random(0)
        span = float(ref["seconds"])
        chain, kills = 0, 0
        while kills < N_RANDOM:
            out, committed = tmp_path / f"random{chain}" / "m", 0
            while kills < N_RANDOM:
                r = z.run(out, delay=rng.uniform(0.0, span))
                if r["signal"] is None:
                    break
                assert r["signal"] == signal.SIGKILL
                if "resumed_from" in r:  # not when killed before it had resumed
                    assert r["resumed_from"] == committed
                committed = _committed(out, refck)
                kills += 1
            _finish(z, out, committed, reference, r if r["signal"] is None else None)
            chain += 1
    finally:
        z.close()


def test_recovery_rules_and_refusals(tmp_path: Path) -> None:
    """The on-disk states a kill can leave, built by hand: what is resumed from, what is deleted, what is refused."""
    ckpt = tmp_path / "m.ckpt"
    store = tmp_path / "m.ckpt.d"
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    opt.step()

    def save(step: int) -> Path:
        return train_mod.save_checkpoint(ckpt, step, model.state_dict(), opt.state_dict(), {"note": step})

    assert train_mod.find_checkpoint(ckpt) is None
    first = save(1)
    assert ckpt.is_symlink() and os.readlink(ckpt) == "m.ckpt.d/step-00000001" and (ckpt / "meta.json").is_file()
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["step"] == 1 and meta["note"] == 1 and set(meta["files"]) == {"model.safetensors", "optimizer.pt"}
    with pytest.raises(ValueError, match="current one"):
        save(1)
    second = save(2)
    assert not first.exists() and sorted(p.name for p in store.iterdir()) == ["step-00000002"]
    state, opt_state = train_mod.load_checkpoint(second)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert torch.equal(opt_state["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])

    # A kill left a newer complete checkpoint (never made current), a temporary and a half-deleted one.
    shutil.copytree(second, store / "step-00000003")
    (store / "tmp-00000004").mkdir()
    (store / "step-00000001.trash").mkdir()
    (tmp_path / "m.ckpt.newlink").symlink_to("m.ckpt.d/step-00000003")
    assert train_mod.find_checkpoint(ckpt) == second  # the link wins over the newer stray
    assert sorted(p.name for p in store.iterdir()) == ["step-00000002"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.ckpt", "m.ckpt.d"]

    # No link (killed before the first switch, or while removing): the newest step- directory, linked again.
    shutil.copytree(second, store / "step-00000005")
    ckpt.unlink()
    found = train_mod.find_checkpoint(ckpt)
    assert found == store / "step-00000005" and os.readlink(ckpt) == "m.ckpt.d/step-00000005"
    assert not second.exists()

    # A damaged file is refused, never resumed from.
    data = bytearray((found / "optimizer.pt").read_bytes())
    data[-30] ^= 0xFF
    (found / "optimizer.pt").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"optimizer\.pt does not match"):
        train_mod.load_checkpoint(found)

    # Only a temporary directory and a dangling link: nothing to resume from, and nothing left behind.
    train_mod.remove_checkpoint(ckpt)
    assert list(tmp_path.iterdir()) == []
    (store / "tmp-00000001").mkdir(parents=True)
    ckpt.symlink_to("m.ckpt.d/step-00000001")
    assert train_mod.find_checkpoint(ckpt) is None
    assert list(tmp_path.iterdir()) == []

    # A legacy directory checkpoint (written before the store layout), and the complete ``.tmp`` that the old
    # code was about to rename over it when killed: the ``.tmp`` is newer and wins; the next save supersedes both.
    legacy = tmp_path / "m.ckpt"
    legacy.mkdir()
    for name in ("meta.json", "model.safetensors", "optimizer.pt"):
        (legacy / name).write_bytes(b"{}")
    assert train_mod.find_checkpoint(ckpt) == legacy
    shutil.copytree(legacy, tmp_path / "m.ckpt.tmp")
    assert train_mod.find_checkpoint(ckpt) == tmp_path / "m.ckpt.tmp"
    save(7)
    assert ckpt.is_symlink() and sorted(p.name for p in tmp_path.iterdir()) == ["m.ckpt", "m.ckpt.d"]
    assert load_file(str(ckpt / "model.safetensors")).keys() == model.state_dict().keys()
