"""Where a task graph runs (cmtlib.experiments.graph): a Dask cluster made for this machine, one the
user already runs, or no cluster at all.

    with open_cluster(scheduler="", jobs=0, threads=0, device="auto") as cluster: ...

- `jobs` 1: no cluster. Every task runs in this process, one after another (debugging, pdb).
- `scheduler` ADDRESS: an existing cluster (`dask scheduler` and `dask worker`s, or dask-jobqueue's
  SLURM / PBS clusters): only a client is made, and leaving never shuts the cluster down.
- otherwise a LocalCluster sized to this machine (`local_layout`):
    CPU: worker processes with `threads` torch + BLAS threads each, so that workers x threads does
         not exceed the cores (on 2 cores with threads 1: 2 workers x 1 thread). A worker runs one
         compute task at a time (its resource COMPUTE); a light task, a report page whose work is in
         a kernel process of its own, runs beside it, as a kernel beside a training did before;
    GPU: one worker per GPU (device auto or cuda, and torch sees GPUs), each seeing only its own
         device: CUDA_VISIBLE_DEVICES set per worker (a SpecCluster of Nannies; dask-cuda's
         LocalCUDACluster does the same and is not needed).

Workers are not daemonic (`distributed.worker.daemon: False`): data preparation inside a task
starts process pools of its own (cmtlib/data/workers.py, data/synth/build.py), which a daemonic
process may not (dask/distributed#2142); a user's own workers need the same setting (README).
Local workers ignore SIGINT, so Ctrl-C reaches this process alone; on the way out it kills its
local workers and everything they started (Jupyter kernels, pool workers). A user's cluster is
only asked to cancel what was submitted to it.
A worker that dies mid-task (killed, out of memory, crashed) costs that task one more try on
another worker (`allowed-failures: 1`; a study's run then resumes from its last epoch); if that
worker dies too, the task is reported lost and the others go on. Tasks merely queued on a worker
that died are sent elsewhere.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from cmtlib.errors import CmtError

CONNECT_TIMEOUT_S = 10  # an unreachable scheduler fails within this (the bound: 15 s)
# A local worker's one compute slot: the tasks that use its CPU (or GPU) threads take it, one at a time;
# a light task (a report page, whose kernel is a process of its own) runs in the worker's second thread.
COMPUTE = "compute"
# Imported by every local worker as it starts, all at once, rather than by each worker's first task one
# after another (torch and the engine take seconds to import).
PRELOAD = ["cmtlib.engine", "cmtlib.evaluate"]
STOP_WAIT_S = 5  # how long closing a client or a cluster may take
KILL_WAIT_S = 1  # how long a process sent SIGTERM on Ctrl-C gets before SIGKILL (a worker busy training ignores it)


class SchedulerError(CmtError):
    """The Dask scheduler named by --scheduler (or the params key `scheduler`) cannot be used."""


@dataclass(frozen=True)
class Layout:
    """A local cluster's shape: worker processes, torch + BLAS threads in each, GPUs (one a worker)."""

    workers: int
    threads: int
    gpus: tuple[int, ...] = ()

    def describe(self) -> str:
        if self.gpus:
            return f"{self.workers} worker(s), one per GPU ({', '.join(map(str, self.gpus))}), {self.threads} CPU thread(s) each"
        return f"{self.workers} worker process(es) x {self.threads} thread(s)"


def cores() -> int:
    """The CPU cores this process may use (its affinity mask where the system has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def visible_gpus(device: str = "auto") -> tuple[int, ...]:
    """The GPUs a local cluster should use: none for device cpu or where torch sees none."""
    if str(device or "auto").lower() not in ("auto", "cuda") and not str(device).lower().startswith("cuda"):
        return ()
    import torch  # the client has torch already: the experiments layer trains with it

    return tuple(range(torch.cuda.device_count())) if torch.cuda.is_available() else ()


def local_layout(jobs: int = 0, threads: int = 0, most: int | None = None, n_cores: int | None = None,
                 gpus: tuple[int, ...] = ()) -> Layout:
    """How many workers of how many threads this machine runs.

    jobs: worker processes (0 = as many as fit: cores // threads, or one per GPU); threads: torch +
    BLAS threads a task uses (0 = the cores shared out evenly); most: no more workers than the graph
    could ever keep busy at once.
    """
    if jobs < 0 or threads < 0:
        raise CmtError(f"jobs and threads must be >= 0, got jobs={jobs}, threads={threads}")
    n_cores = n_cores or cores()
    cap = max(1, most) if most else None
    if gpus:
        n = min(x for x in (len(gpus), jobs or len(gpus), cap or len(gpus)))
        return Layout(n, threads or max(1, n_cores // n), tuple(gpus[:n]))
    n = jobs or (n_cores // threads if threads else n_cores)
    n = max(1, min(n, cap) if cap else n)
    return Layout(n, threads or max(1, n_cores // n))


@dataclass
class Cluster:
    """What `open_cluster` opened: `client` is None when tasks run here, one after another."""

    client: Any = None
    local: Any = None  # the LocalCluster / SpecCluster this process started (None for a user's own)
    layout: Layout | None = None
    address: str = ""

    @property
    def synchronous(self) -> bool:
        return self.client is None

    def describe(self) -> str:
        if self.client is None:
            return "no cluster: one task at a time in this process"
        if self.local is not None:
            return f"a local Dask cluster, {self.layout.describe()}"
        n = len(self.client.scheduler_info().get("workers", {}))
        return f"the Dask cluster at {self.address} ({n} worker(s) now)"

    def dashboard(self) -> str:
        """The dashboard's address, or '' where there is none (bokeh is not installed where the
        scheduler runs: its web server then serves no dashboard)."""
        if self.client is None:
            return ""
        import importlib.util

        try:
            served = "dashboard" in self.client.scheduler_info().get("services", {})
            bokeh = self.client.run_on_scheduler(importlib.util.find_spec, "bokeh") is not None
        except Exception:  # noqa: BLE001 -- a convenience line; the graph runs without it
            return ""
        return self.client.dashboard_link if served and bokeh else ""


@contextlib.contextmanager
def open_cluster(scheduler: str = "", jobs: int = 0, threads: int = 0, device: str = "auto", most: int | None = None,
                 say=print) -> Iterator[Cluster]:
    """A cluster for one task graph (module docstring); closed (local) or left (a user's) on exit."""
    if jobs == 1 and not scheduler:
        yield Cluster()
        return
    if scheduler:
        client = connect(scheduler)
        cluster = Cluster(client=client, address=scheduler)
    else:
        cluster = start_local(local_layout(jobs, threads, most, gpus=visible_gpus(device)))
    say(f"running on {cluster.describe()}")
    dashboard = cluster.dashboard()
    if dashboard:
        say(f"Dask dashboard: {dashboard}")
    try:
        yield cluster
    except BaseException:
        if cluster.local is None:
            close(cluster)
            raise
        # Ctrl-C or a bug: the running tasks are not waited for. Every process of the workers' trees is
        # stopped (closing the cluster alone would orphan their kernels and pools), then the cluster closed.
        procs = worker_trees(cluster.local)
        logging.getLogger("distributed").setLevel(logging.CRITICAL)  # the nannies' complaints about dying workers
        for nanny in list(cluster.local.workers.values()):
            nanny.auto_restart = False
        stop(procs)
        close(cluster)
        cluster.local = cluster.client = None
        gc.collect()  # the nannies' queues: their semaphores are released now, not reported as leaked at exit
        raise
    close(cluster)


def connect(address: str):
    """A client of the scheduler at `address`; SchedulerError in one line when it cannot be reached."""
    from distributed import Client

    try:
        return Client(address, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
    except (OSError, TimeoutError, ValueError, TypeError) as err:
        raise SchedulerError(
            f"cannot reach the Dask scheduler at {address} within {CONNECT_TIMEOUT_S} s ({type(err).__name__}): check that "
            "`dask scheduler` runs there, the address (tcp://HOST:PORT, 8786 by default) and that no firewall blocks the port"
        ) from err


def _config(layout: Layout) -> dict[str, Any]:
    threads = str(layout.threads)
    return {
        # A task whose worker died runs once more elsewhere, then is reported (not 0: a task only queued on
        # the dying worker counts as a failure too, and would be lost with it).
        "distributed.scheduler.allowed-failures": 1,
        # Only the thread counts: Dask's default also sets MALLOC_TRIM_THRESHOLD_, which a run trained on its
        # own (`cmt train`) does not have; a task runs in the same environment as that run.
        "distributed.nanny.pre-spawn-environ": {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads},
    }


def start_local(layout: Layout) -> Cluster:
    """A local cluster of `layout`'s shape, its workers deaf to Ctrl-C (they inherit SIG_IGN)."""
    import dask
    from distributed import Client, LocalCluster, Nanny, Scheduler, SpecCluster

    # Any free port: another cluster on this machine (someone else's) may hold Dask's 8787, and taking
    # another then warns on every start. Without bokeh there is no dashboard to serve.
    scheduler = {"dashboard": _has_bokeh(), "dashboard_address": ":0"}
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if _main_thread() else None
    # For the process's life, not a `with`: a Nanny reads it again whenever it restarts a dead worker.
    dask.config.set({"distributed.worker.daemon": False})
    try:
        with dask.config.set(_config(layout)):
            if layout.gpus:
                workers = {f"gpu{g}": {"cls": Nanny, "options": {
                    "nthreads": 2, "env": {"CUDA_VISIBLE_DEVICES": str(g)}, "resources": {"GPU": 1, COMPUTE: 1}, "silence_logs": logging.ERROR,
                    "preload": PRELOAD}} for g in layout.gpus}
                local = SpecCluster(workers=workers, scheduler={"cls": Scheduler, "options": scheduler},
                                    silence_logs=logging.ERROR)
            else:
                local = LocalCluster(n_workers=layout.workers, threads_per_worker=2, resources={COMPUTE: 1}, processes=True,
                                     scheduler_kwargs=scheduler, silence_logs=logging.ERROR, preload=PRELOAD)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    return Cluster(client=Client(local, set_as_default=False), local=local, layout=layout, address=local.scheduler_address)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _has_bokeh() -> bool:
    import importlib.util

    return importlib.util.find_spec("bokeh") is not None


def worker_pids(local) -> list[int]:
    """The process ids of a local cluster's worker processes (those alive now)."""
    pids = []
    for nanny in list(getattr(local, "workers", {}).values()):
        process = getattr(getattr(nanny, "process", None), "process", None)
        pid = getattr(process, "pid", None)
        if pid:
            pids.append(int(pid))
    return pids


def worker_trees(local) -> list:
    """A local cluster's worker processes and every process below them (Jupyter kernels, which start
    sessions of their own, included), as psutil.Process objects."""
    import psutil  # a dependency of distributed

    procs = []
    for pid in worker_pids(local):
        try:
            root = psutil.Process(pid)
            procs += [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
    return procs


def stop(procs: list) -> None:
    """SIGTERM each process still alive, then SIGKILL those alive KILL_WAIT_S later."""
    import psutil

    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=KILL_WAIT_S)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


def close(cluster: Cluster) -> None:
    """Close the client, and the cluster if this process started it (a user's cluster stays up)."""
    if cluster.client is not None:
        with contextlib.suppress(Exception):  # closing after a failure must not hide that failure
            cluster.client.close(timeout=STOP_WAIT_S)
    if cluster.local is not None:
        with contextlib.suppress(Exception):
            cluster.local.close(timeout=STOP_WAIT_S)
