"""A `cmt data cache` killed mid-build: its worker processes end with it (SIGKILL and SIGTERM), and
the next build removes the temporary files it left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cmtlib.data.cache import build_cache, open_cache
from cmtlib.data.workers import BusyError, exclusive_build

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process state from /proc (Linux)")

# Each row sleeps, so the build is still running when the test kills it.
SCRIPT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import cmtlib.data.cache as cache

    read = cache._process_row

    def slow(task):
        time.sleep(0.3)
        return read(task)

    cache._process_row = slow
    cache.build_cache(Path(sys.argv[1]), size=16, out=Path(sys.argv[2]), workers=2)
""")


def _manifest(tmp_path: Path, n: int = 40) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        path = tmp_path / "img" / f"{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (24, 24), dtype=np.uint8)).save(path)
        rows.append({"image_id": f"t:{i}", "path": str(path)})
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    return tmp_path / "m.csv"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie has ended; only its exit status waits to be read


def _children(pid: int) -> set[int]:
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[1]) == pid:
            out.add(int(stat.parent.name))
    return out


def _wait(condition, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killed_build_leaves_no_workers_and_the_next_build_cleans_up(tmp_path, sig):
    manifest, out = _manifest(tmp_path), tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(manifest), str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert _wait(lambda: len(_children(proc.pid)) >= 2, 60), "the build never started its two workers"
        workers = _children(proc.pid)
        assert _wait(lambda: any(out.glob(".images.npy.*")), 30)
        proc.send_signal(sig)
        proc.wait(timeout=30)
        assert _wait(lambda: not any(_alive(w) for w in workers), 15), "workers outlived the killed build"
    finally:
        if proc.poll() is None:
            proc.kill()
    assert any(p.name.startswith(".images.npy.") for p in out.iterdir())  # what the kill left

    report = build_cache(manifest, size=16, out=out, workers=1)
    assert report.n_cached == 40
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert "temporary file(s) left by an interrupted build" in report.summary()
    assert open_cache(out)[1].shape == (40, 16, 16)


def test_a_second_build_into_the_same_folder_is_refused_while_the_first_runs(tmp_path):
    with exclusive_build(tmp_path, ("images.npy",)):
        with pytest.raises(BusyError, match="another build is writing into"):
            with exclusive_build(tmp_path, ("images.npy",), wait=0.5):
                pass
    with exclusive_build(tmp_path, ("images.npy",)) as removed:  # released when the first ended
        assert removed == 0
