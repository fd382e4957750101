"""The training loop's settings (TrainConfig), kept free of torch so that loading params (every
notebook does) does not import it."""

from __future__ import annotations

from dataclasses import dataclass

BEST_BY = {"val_loss": "min", "val_covid_auc": "max"}
LR_SCHEDULES = ("constant", "cosine")


@dataclass
class TrainConfig:
    # The paper: Adam, lr 5e-5, batch 16, 30 epochs (params/paper.yaml).
    epochs: int = 30
    # Images per step and process (under torchrun each GPU takes batch_size of every global batch).
    batch_size: int = 16
    lr: float = 5e-5
    weight_decay: float = 0.0
    # Seeds sampling, augmentation and initialisation; CPU runs repeat exactly for a seed.
    seed: int = 0
    # auto = CUDA when available, else CPU.
    device: str = "auto"
    # auto = bf16 autocast on CUDA, fp32 on CPU; or bf16 / fp32.
    precision: str = "auto"
    channels_last: bool = True
    compile: bool = False
    # The paper added five augmented copies of every COVID image: COVID drawn 6x as often.
    covid_oversample: float = 6.0
    # Augmentation (the paper): rotation of +/- rotate_deg and translation of +/- translate_px,
    # in pixels at the paper's 224 px (scaled to the training size), same for image and masks.
    rotate_deg: float = 10.0
    translate_px: float = 10.0
    # Loss weights of the five terms (equal in the paper).
    w_lung: float = 1.0
    w_disease: float = 1.0
    w_healthy: float = 1.0
    w_covid: float = 1.0
    w_other: float = 1.0
    eval_batch_size: int = 64
    # CPU threads for torch (0 = torch's default).
    threads: int = 0
    # Where the run folder goes; '' = runs/<params name>.
    run_dir: str = ""
    # Which checkpoint is best.pt: val_loss (lowest; covers every task) or val_covid_auc (highest).
    best_by: str = "val_loss"
    # Steps between progress-bar updates; each update waits for the device, so not every step.
    log_every: int = 10
    # constant (the paper) or cosine: lr decays per step along a half cosine to 0 at the last step
    # (short CPU runs end better; extending `epochs` on --resume then changes the schedule).
    lr_schedule: str = "constant"
