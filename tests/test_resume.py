"""--resume after a stop ends with the same weights as an uninterrupted run (CPU, bitwise)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from cmtlib.run import Run
from cmtlib.checkpoint import read_checkpoint
from cmtlib.engine import train
from test_engine import one_thread, toy_params  # noqa: F401 (fixture)


def weights(run: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(run / "checkpoints" / "last.pt")["state_dict"]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{k}: max difference {(wa[k].float() - wb[k].float()).abs().max()}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted 3-epoch run everything is compared with."""
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("ref")
    return train(toy_params(base, epochs=3, run_dir=str(base / "run")))


def test_in_process_stop_then_resume(tmp_path, reference, monkeypatch):
    params = toy_params(tmp_path, epochs=3)
    real_write = Run.write_history

    def stop_after_epoch_1(run, history):
        real_write(run, history)
        if len(history) == 1:
            raise KeyboardInterrupt("simulated stop after epoch 1")

    monkeypatch.setattr(Run, "write_history", stop_after_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        train(params)
    monkeypatch.setattr(Run, "write_history", real_write)
    torch.manual_seed(1234)  # global state left behind by the stopped run must not matter
    assert read_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["epoch"] == 1
    run = train(params, resume=True)
    assert_same_weights(run, reference)
    history = pd.read_csv(run / "history.csv")
    ref_history = pd.read_csv(reference / "history.csv")
    assert history["epoch"].tolist() == [1, 2, 3]
    assert history["train_loss"].tolist() == ref_history["train_loss"].tolist()
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "finished" and info["resumed_at"][0]["from_epoch"] == 1


def test_resume_uses_the_thread_count_the_run_recorded(tmp_path, reference):
    """A run started with 1 thread and resumed where 2 are asked for continues with 1 (recorded in
    run.json): the thread count changes a CPU run's sums, and a resumed run must equal an
    uninterrupted one."""
    first = train(toy_params(tmp_path, epochs=1, threads=1))
    assert json.loads((first / "run.json").read_text())["threads"] == 1
    run = train(toy_params(tmp_path, epochs=3, threads=2), resume=True)
    assert json.loads((run / "run.json").read_text())["threads"] == 1 and torch.get_num_threads() == 1
    assert_same_weights(run, reference)


def test_resume_extends_a_finished_run(tmp_path, reference):
    train(toy_params(tmp_path, epochs=1))
    run = train(toy_params(tmp_path, epochs=3), resume=True)
    assert_same_weights(run, reference)


def test_subprocess_killed_with_sigkill_then_resumed(tmp_path, reference):
    params = toy_params(tmp_path, epochs=3)
    params_file = tmp_path / "toy.yaml"
    params_file.write_text(yaml.safe_dump(params.flat()))
    cmt = [sys.executable, "-m", "cmtlib.cli", "train", "--params", str(params_file)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    proc = subprocess.Popen(cmt, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not last.is_file():
        assert proc.poll() is None, f"training ended before its first checkpoint: {proc.stderr.read().decode()[-2000:]}"
        assert time.monotonic() < deadline, "no checkpoint after 300 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    stopped_at = read_checkpoint(last)["epoch"]
    assert stopped_at < 3
    done = subprocess.run(cmt + ["--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_weights(tmp_path / "run", reference)
    log = (tmp_path / "run" / "train.log").read_text()
    assert "epoch 3/3" in log and json.loads((tmp_path / "run" / "run.json").read_text())["resumed_at"][0]["from_epoch"] == stopped_at


def test_resume_without_a_run_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(toy_params(tmp_path, epochs=1), resume=True)
