"""What the report chain runs and shows."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ReportConfig:
    # The run's name; '' = the params file's stem. Names the report folder reports/<run name>/.
    run_name: str = ""
    # Folder that holds one sub-folder per report run, and the index of runs.
    reports_dir: str = "reports"
    # Notebooks to run, by number or stem ("01", "02_training"); [] = every notebooks/NN_*.ipynb.
    # A subset lets a researcher re-render one page without re-running the whole chain.
    report_notebooks: list[str] = field(default_factory=list)
    # Jupyter kernel for the chain; '' = the one whose python is the interpreter running `cmt`
    # (a kernel from another environment would import another cmtlib, or none).
    report_kernel: str = ""
    # Longest a single notebook cell may run, in seconds (0 = no limit); a hung cell must not
    # hold CI forever, and training on a CPU takes minutes, so the default is generous.
    report_cell_timeout: int = 3600
    # Figure resolution in the HTML pages: 110 dpi is sharp on screen and keeps a page small.
    report_dpi: int = 110
    # Images in the data page's sample grid (masks drawn on top); enough to see every class.
    report_sample_images: int = 8
    # Longest table shown in full on a page (quarantine, duplicates); the rest is counted.
    report_max_rows: int = 50
    # Test films on the CAM page (and the CAM part of the shortcut audit). ScoreCAM runs the
    # encoder once per feature channel for every film (about 0.3 s a film at 96 px, width 0.125;
    # seconds at 224 px, full width), so a handful keeps the page fast; half are COVID-19 films
    # with a reference disease region, which the agreement measures need.
    report_cam_images: int = 8
