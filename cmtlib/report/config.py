"""What the report chain runs and shows."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ReportConfig:
    # The run's name; '' = the params file's stem.
    run_name: str = ""
    # Folder that holds one sub-folder per report run, and the index of runs.
    reports_dir: str = "reports"
