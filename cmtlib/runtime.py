"""How a process executes: device, precision, seeds, CPU threads, torchrun processes, the checkout's
commit, and `quietly` (a call whose console output is kept off a report page). The run folder
itself is cmtlib.run's.

Everything here is small and side-effect free except `seed_everything`, `set_threads` and
`init_distributed`, which change process-wide state on purpose.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from cmtlib.errors import ConfigError

PRECISIONS = ("auto", "bf16", "fp32")


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """`auto` -> the process's CUDA device when there is one, else the CPU; `cuda`, `cuda:1`, `cpu`
    as given. Under torchrun `cuda` means this process's GPU (LOCAL_RANK)."""
    name = (name or "auto").lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device={name} asked for, but torch sees no CUDA device; use device=cpu or device=auto")
        if name == "cuda":
            name = f"cuda:{local_rank}"
    elif name != "cpu":
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32. `auto` = bf16 on CUDA, fp32 on the CPU (CPU bf16
    autocast is slow on most CPUs and would make CPU runs differ from the reference)."""
    precision = (precision or "auto").lower()
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"precision={precision} needs bf16, which {torch.cuda.get_device_name(device)} lacks; use precision=fp32")
    return torch.bfloat16


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """Mixed precision when `dtype` is set, a no-op otherwise."""
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from several integers (seed, epoch, step, rank), well spread so that nearby
    tuples give unrelated streams (splitmix64 finaliser)."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
        h = (h * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 29
    return h & 0x7FFFFFFFFFFFFFFF


def generator(*parts: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A fresh torch.Generator seeded from `parts` (e.g. seed, epoch)."""
    g = torch.Generator(device=device)
    g.manual_seed(mix_seed(*parts))
    return g


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA) and make the cheap deterministic choices: cuDNN autotuning stays on
    for speed on GPU (CPU runs, which tests compare bitwise, do not use cuDNN)."""
    torch.manual_seed(int(seed))
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(int(seed))
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def set_threads(n: int) -> None:
    """CPU threads for torch and for numpy / scikit-learn (BLAS, OpenMP) together; 0 leaves the
    libraries' defaults (all cores).

    Both at once, because a limit on torch alone lets a BLAS call in the same process take every
    core again: on a shared 2-core CPU two busy threads per library run several times slower than
    one. The limit stays in force for the process's life.
    """
    if n < 0:
        raise ConfigError(f"threads must be >= 0 (0 = the libraries' defaults), got {n}")
    if n == 0:
        return
    torch.set_num_threads(int(n))
    try:
        from threadpoolctl import threadpool_limits  # installed with scikit-learn; absent on a bare GPU machine
    except ImportError:
        return
    threadpool_limits(limits=int(n))


@dataclass(frozen=True)
class DistInfo:
    """This process's place among torchrun's processes (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def dist_from_env() -> DistInfo:
    """Read torchrun's RANK / WORLD_SIZE / LOCAL_RANK; a single process when they are absent."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    return DistInfo(rank=int(os.environ["RANK"]), world_size=world, local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def init_distributed(device: torch.device, info: DistInfo) -> bool:
    """Start the process group (nccl on CUDA, gloo on the CPU) unless it is already up; True when
    this call started it (and so should shut it down)."""
    import torch.distributed as dist

    if not info.enabled or dist.is_initialized():
        return False
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return True


def shutdown_distributed() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        import torch.distributed as dist

        dist.barrier()


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({device})"
    return f"cpu ({torch.get_num_threads()} threads)"


def git_commit(path: str | os.PathLike | None = None, short: bool = False) -> str:
    """The commit of the checkout holding `path` (this package by default), with '+dirty' when
    tracked files changed; '' outside a git checkout. `short`: the abbreviated hash (report pages)."""
    cwd = Path(path) if path else Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", *(["--short"] if short else []), "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return ""
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return head.stdout.strip() + ("+dirty" if status.returncode == 0 and status.stdout.strip() else "")


def quietly(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call fn with its console output (progress bars, log lines) captured, so that it stays off a
    report page (a run keeps its own train.log). On failure the last lines are printed, then the
    error raised."""
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            return fn(*args, **kwargs)
    except BaseException:
        print("\n".join(buf.getvalue().splitlines()[-30:]), file=sys.stderr)
        raise
