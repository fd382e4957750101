"""Where and how a run executes: device, precision, seeds, CPU threads, torchrun processes, and
the run folder (claimed once, never overwritten silently; logging to train.log and the console).

Everything here is small and side-effect free except `seed_everything`, `set_threads` and
`init_distributed`, which change process-wide torch state on purpose.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from cmtlib.errors import ConfigError, MissingInputError, RunFolderError

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
    """CPU threads for torch; 0 keeps torch's default (all cores)."""
    if n < 0:
        raise ConfigError(f"threads must be >= 0 (0 = torch's default), got {n}")
    if n:
        torch.set_num_threads(int(n))


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


def git_commit(path: str | os.PathLike | None = None) -> str:
    """The checkout's commit (with '+dirty' when files changed), or '' outside a git checkout."""
    cwd = Path(path) if path else Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    if head.returncode != 0:
        return ""
    commit = head.stdout.strip()
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True, timeout=10)
    return commit + ("+dirty" if status.returncode == 0 and status.stdout.strip() else "")


# ---- the run folder -------------------------------------------------------------------------------

# Keys that may change between a run and its --resume (they do not change what is learned).
RESUMABLE_CHANGES = frozenset({"epochs", "device", "threads", "compile", "log_every", "eval_batch_size", "cache_dir", "reports_dir"})


def run_dir_for(params) -> Path:
    """`train.run_dir`, or runs/<run name> under the current folder."""
    return Path(params.train.run_dir or Path("runs") / params.run_name).resolve()


def claim_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to overwrite a run silently; --overwrite replaces only a cmtlib run folder."""
    import shutil

    if resume and overwrite:
        raise ConfigError("--resume continues a run and --overwrite replaces it; give one of them")
    if resume:
        if not (run_dir / "config.yaml").is_file():
            raise MissingInputError(f"nothing to resume: {run_dir} holds no run (no config.yaml); start the run without --resume")
        return
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise RunFolderError(f"run folder {run_dir} already exists; use --resume to continue it or --overwrite to replace it")
        if not any((run_dir / name).exists() for name in ("config.yaml", "run.json", "checkpoints")):
            raise RunFolderError(f"{run_dir} is not a cmtlib run folder (no config.yaml, run.json or checkpoints/); remove or rename it yourself")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)


def check_resume_config(run_dir: Path, flat: dict[str, Any]) -> None:
    import yaml

    stored = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
    changed = sorted(k for k in set(stored) | set(flat) if stored.get(k) != flat.get(k) and k not in RESUMABLE_CHANGES)
    if changed:
        diffs = "; ".join(f"{k}: {stored.get(k)!r} -> {flat.get(k)!r}" for k in changed[:8])
        raise ConfigError(f"cannot resume {run_dir} with different parameters ({diffs}); resume with the run's own config.yaml or start a new run")


class RunLogging:
    """train.log (appended on resume) and the console for the 'cmtlib' loggers, rank 0 only."""

    def __init__(self, run_dir: Path, enabled: bool):
        self.logger, self.handlers = logging.getLogger("cmtlib"), []
        if enabled:
            fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
            self.handlers = [logging.FileHandler(run_dir / "train.log", mode="a", encoding="utf-8"), logging.StreamHandler()]
            for h in self.handlers:
                h.setFormatter(fmt)

    def __enter__(self):
        self.saved = (self.logger.level, self.logger.propagate)
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = not self.handlers  # our own console handler replaces the root's
        for h in self.handlers:
            self.logger.addHandler(h)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and self.handlers:
            # The error reaches the console through the caller; train.log must say why the run
            # stopped too, or a folder left by a failed start reads as an unexplained empty log.
            record = self.logger.makeRecord(self.logger.name, logging.ERROR, __file__, 0, "stopped: %s: %s",
                                            (exc_type.__name__, exc), None)
            self.handlers[0].handle(record)
        for h in self.handlers:
            self.logger.removeHandler(h)
            h.close()
        self.logger.level, self.logger.propagate = self.saved
