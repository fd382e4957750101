"""Where the graphs run: the local cluster's shape, a user's own cluster by address (a `dask scheduler`
and two `dask worker`s started here), a wrong address, the GPU route's per-worker devices, process
pools inside tasks, and Ctrl-C leaving no process behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from cmtlib.experiments.cluster import Layout, SchedulerError, connect, local_layout, open_cluster, start_local, close

REPO = Path(__file__).resolve().parents[1]
TINY = "base: {smoke}\nsynth_n: 120\nsynth_size: 32\nimage_size: 32\nthreads: 1\neval_batch_size: 32\nreports_dir: {reports}\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def study_files(tmp_path: Path, **extra: str) -> list[Path]:
    files = []
    for name, tasks in (("all", "[lung, disease, healthy, multilabel]"), ("lung", "[lung, multilabel]")):
        path = tmp_path / f"{name}.yaml"
        text = TINY.format(smoke=REPO / "params" / "smoke.yaml", reports=tmp_path / "reports")
        path.write_text(text + f"run_name: {name}\ntasks: {tasks}\n" + "".join(f"{k}: {v}\n" for k, v in extra.items()))
        files.append(path)
    return files


def cmt(*args: str, tmp_path: Path, **popen) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "CMT_DATA_DIR": str(tmp_path / "data"), "TQDM_DISABLE": "1"}
    return subprocess.Popen([sys.executable, "-m", "cmtlib.cli", *args], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


def test_the_local_cluster_fits_the_cores():
    assert local_layout(threads=1, n_cores=2) == Layout(2, 1)  # this machine: 2 workers x 1 thread
    assert local_layout(threads=4, n_cores=16) == Layout(4, 4)
    assert local_layout(threads=0, n_cores=16, most=2) == Layout(2, 8)  # two runs share out all cores
    assert local_layout(threads=1, n_cores=16, most=3) == Layout(3, 1)  # never more workers than tasks to run at once
    assert local_layout(jobs=3, n_cores=12) == Layout(3, 4)
    assert local_layout(threads=8, n_cores=4) == Layout(1, 8)  # one run that asks for more threads than cores
    assert local_layout(n_cores=16, gpus=(0, 1, 2, 3)) == Layout(4, 4, (0, 1, 2, 3))  # one worker per GPU
    assert local_layout(n_cores=16, gpus=(0, 1, 2, 3), most=2) == Layout(2, 8, (0, 1))


def gpu_seen() -> str:
    return os.environ.get("CUDA_VISIBLE_DEVICES", "")


def test_the_gpu_route_gives_each_worker_its_own_device():
    """Tested without GPUs: each worker process is started with only its GPU visible."""
    cluster = start_local(Layout(2, 1, (0, 1)))
    try:
        seen = cluster.client.run(gpu_seen)
        names = {w["name"]: w["resources"] for w in cluster.client.scheduler_info()["workers"].values()}
    finally:
        close(cluster)
    assert sorted(seen.values()) == ["0", "1"] and names == {"gpu0": {"GPU": 1, "compute": 1}, "gpu1": {"GPU": 1, "compute": 1}}


def pool_sum() -> tuple[int, bool]:
    """What data preparation does inside a task: a process pool of its own (cmtlib.data.workers)."""
    import multiprocessing

    from cmtlib.data.workers import pool

    with pool(2) as p:
        return sum(p.map(abs, [-1, -2, -3])), multiprocessing.current_process().daemon


def test_a_task_may_start_a_process_pool():
    with open_cluster(jobs=2, threads=1, say=lambda line: None) as cluster:
        assert cluster.client.submit(pool_sum, pure=False).result() == (6, False)


def test_an_unreachable_scheduler_fails_fast_in_one_line(tmp_path):
    address = f"tcp://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(SchedulerError, match=f"cannot reach the Dask scheduler at {address} within 10 s.*`dask scheduler` runs there"):
        connect(address)
    assert time.monotonic() - t0 < 15
    files = study_files(tmp_path)
    t0 = time.monotonic()
    proc = cmt("ablation", *map(str, files), "--scheduler", address, "--out", str(tmp_path / "abl"), tmp_path=tmp_path)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and time.monotonic() - t0 < 20, err
    assert err.strip().count("\n") == 0 and err.startswith(f"cmt: error: cannot reach the Dask scheduler at {address}")
    # A study file with an unknown key is refused before the scheduler is even asked.
    (tmp_path / "bad.yaml").write_text("base: all.yaml\nepochz: 3\n")
    t0 = time.monotonic()
    proc = cmt("ablation", str(files[0]), str(tmp_path / "bad.yaml"), "--scheduler", address, tmp_path=tmp_path)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "epochz" in err and "did you mean epochs" in err and time.monotonic() - t0 < 8, err


@pytest.fixture
def own_cluster(tmp_path):
    """A `dask scheduler` and two `dask worker` processes on 127.0.0.1, as a user would start them
    (non-daemonic workers: the data preparation starts process pools), stopped afterwards."""
    from distributed import Client

    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    dask = [sys.executable, "-m", "dask"]
    procs = [subprocess.Popen([*dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"], env=env, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    procs += [subprocess.Popen([*dask, "worker", address, "--nthreads", "1", "--name", f"mine{i}", "--no-dashboard"], env=env, cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in (1, 2)]
    try:
        with Client(address, timeout=30) as client:
            client.wait_for_workers(2, timeout=90)
            workers = set(client.scheduler_info()["workers"])
        yield address, workers
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def test_a_study_runs_on_a_cluster_given_by_address_and_leaves_it_running(tmp_path, own_cluster):
    from distributed import Client

    address, workers = own_cluster
    proc = cmt("ablation", *map(str, study_files(tmp_path)), "--scheduler", address, "--out", str(tmp_path / "abl"), tmp_path=tmp_path)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    import json

    runs = json.loads((tmp_path / "abl" / "summary.json").read_text())["runs"]
    assert [(r["name"], r["status"]) for r in runs] == [("all", "ok"), ("lung", "ok")]
    assert {r["worker"] for r in runs} <= workers and all(r["worker"] for r in runs)
    assert f"running on the Dask cluster at {address} (2 worker(s) now)" in out and "(on worker mine" in out
    assert (tmp_path / "abl" / "runs" / "lung" / "metrics.json").is_file()
    with Client(address, timeout=10) as client:  # the user's cluster is still up, its workers too
        assert set(client.scheduler_info()["workers"]) == workers


def test_ctrl_c_stops_the_local_cluster_and_everything_below_it(tmp_path):
    files = study_files(tmp_path, epochs="5000")  # still training when Ctrl-C comes, however fast the machine
    # A background job of a shell without job control (`make test &`, nohup) starts with SIGINT ignored, and
    # Python keeps it so; Ctrl-C in a terminal reaches a command that hears it, which the child is made to.
    proc = cmt("ablation", *map(str, files), "--out", str(tmp_path / "abl"), "--jobs", "2", tmp_path=tmp_path, start_new_session=True,
               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen: dict[int, psutil.Process] = {}
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    deadline, started = time.monotonic() + 240, 0
    while time.monotonic() < deadline and started < 2:
        started = sum(1 for ln in list(lines) if ln.startswith(("[1/2]", "[2/2]")) and "(on worker" in ln)
        for p in psutil.Process(proc.pid).children(recursive=True):
            seen.setdefault(p.pid, p)
        time.sleep(0.2)
    assert started == 2, "".join(lines)
    time.sleep(2)  # both runs training
    for p in psutil.Process(proc.pid).children(recursive=True):
        seen.setdefault(p.pid, p)
    assert len(seen) >= 2
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
    proc.wait(timeout=60)
    err = proc.stderr.read()
    assert proc.returncode == 130 and "cmt: interrupted" in err, err[-2000:]
    gone, alive = psutil.wait_procs(list(seen.values()), timeout=10)
    assert not alive, [(p.pid, p.name()) for p in alive]
    assert "Traceback" not in err
