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
    # --- the comparison page (09_baselines; cmtlib.report.comparison) ---
    # Deep baselines the comparison page trains, by params/baselines/<name>.yaml stem ([] = none:
    # the page then compares CMTNet with its embedding classifiers only). Each takes only its model
    # keys (model, tasks, width, encoder_weights, head_hidden) from its file and everything else
    # (data, split, optimiser, augmentation, metrics) from this run, so the comparison is like for like.
    report_baselines: list[str] = field(default_factory=lambda: [
        "densenet121", "mobilenet_v2", "resnet18", "vgg19", "unet", "segnet_lung", "segnet_disease", "maskrcnn"])
    # SVMs and random forest on this run's CMTNet embeddings (cmtlib.baselines.EMBEDDING_CLASSIFIERS);
    # seconds each on a CPU, so all five by default, as in the paper's Table IV.
    report_embedding_classifiers: list[str] = field(default_factory=lambda: [
        "svm_sigmoid", "svm_rbf", "svm_poly", "svm_linear", "random_forest"])
    # Image side of the baselines and of a CMTNet trained beside them at the same setting; 0 = this
    # run's image_size. 64 px: the eight baselines must fit about 5 minutes of a 2-core CPU inside
    # `make report`'s 15 (params/paper.yaml sets 0: 224 px, as the paper).
    baseline_image_size: int = 64
    # Epochs of the baselines and of the CMTNet beside them; 0 = this run's epochs. One pass on the
    # CPU for the same budget (ResNet18, not narrowable, takes about a minute a pass at 64 px).
    baseline_epochs: int = 1
    # Training films Mask R-CNN sees (a seeded sample; validation cut to a quarter of it, test
    # complete so its masks are scored on the same films as the others); 0 = all. A Mask R-CNN step
    # costs about three CMTNet steps; 600 films (47 steps, under a minute at 64 px) is the fewest
    # that found the lungs in one pass (300 films, 27 steps: lung Dice 0; 600: 0.90).
    baseline_maskrcnn_max_images: int = 600
    # key=value settings applied to the baselines after their files: "width=1.0" for all,
    # "maskrcnn:model=maskrcnn_resnet50" for one (params/paper.yaml: full width, ImageNet starts).
    baseline_overrides: list[str] = field(default_factory=list)
    # Training seeds of every deep model on the comparison page (CMTNet included): the paper's
    # Fig. 7 spread needs >= 3 (params/paper.yaml: [0, 1, 2]); one on the CPU, to fit the budget.
    report_seeds: list[int] = field(default_factory=lambda: [0])
