"""Shared fixtures. Tests that read ../shared/data fail under CI (CI=true) when it is missing and
skip with a clear message elsewhere."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CXR_PUBLIC = Path(os.environ.get("CMT_CXR_PUBLIC", REPO.parent / "shared" / "data" / "cxr-public"))


@pytest.fixture(scope="session")
def cxr_public() -> Path:
    """The real published chest X-rays in ../shared/data/cxr-public (read in place, never copied)."""
    if not (CXR_PUBLIC / "SOURCES.md").is_file():
        message = f"real data not found at {CXR_PUBLIC} (set CMT_CXR_PUBLIC to its folder)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return CXR_PUBLIC


def smoke_run(root: Path, overrides: dict):
    """The smoke run with `overrides`, trained (or reused) in root/run on one thread, its data in root/data."""
    import torch

    from cmtlib.experiments.runs import ensure_run
    from cmtlib.params import load_params

    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CMT_DATA_DIR", str(root / "data"))
        return ensure_run(load_params(REPO / "params" / "smoke.yaml", overrides), root / "run")
