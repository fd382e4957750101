"""Every component's settings, one dataclass each, in one place beside `cmtlib.params` (which maps
a flat params YAML onto them). Each field has a default and says why; loading refuses unknown keys.

Owner of each class: DataConfig -> cmtlib.data (import, split, cache); ModelConfig -> cmtlib.models
(the registry); TrainConfig -> cmtlib.engine; ExperimentsConfig -> cmtlib.experiments (what is
trained beside a run: baselines, seeds); ReportConfig -> cmtlib.report (what the pages show).
Kept free of torch so that loading params (every notebook does) stays light.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

ALL_TASKS: tuple[str, ...] = ("lung", "disease", "healthy", "multilabel")
BEST_BY = {"val_loss": "min", "val_covid_auc": "max", "last": "last"}
LR_SCHEDULES = ("constant", "cosine")


def switch(default: Any, words: str) -> Any:
    """A field that switches a shortcut mitigation on (docs/shortcuts.md), with its plain description
    beside it: `words` is shown on the index, the training page and in each predict JSON when the
    switch is on; `{value}` and `{other_key}` in it are filled from the run's flat config."""
    return field(default=default, metadata={"switch": words})


def switches_on(config: dict[str, Any]) -> list[str]:
    """The plain descriptions of the switches a flat config turns on (ModelConfig, TrainConfig), in
    field order; [] for none. Values from YAML or JSON ('true', '0') count as what they say."""
    out = []
    for cls in (ModelConfig, TrainConfig):
        for f in fields(cls):
            words = f.metadata.get("switch")
            value = config.get(f.name, f.default)
            if words and str(value).strip().lower() not in ("", "0", "false", "none", "0.0"):
                out.append(words.format_map({**config, "value": value}))
    return out


@dataclass
class DataConfig:
    # synthetic: phantoms made by `cmt data synth`; manifest: an existing manifest at data_root;
    # auto or a collection kind that needs no option (the importers' registry,
    # cmtlib.data.collections.registry.data_kinds(): ieee8023, covidx, nih, chexpert, tbx11k, ...):
    # import the collection(s) at data_root.
    data_kind: str = "synthetic"
    # Manifest path (data_kind=manifest) or collection folder (import kinds); '' for synthetic.
    data_root: str = ""
    # Phantom count, their stored size and seed: 1,200 images at 128 px train a narrow CMTNet on 2 cores.
    synth_n: int = 1200
    synth_size: int = 128
    synth_seed: int = 0
    # How strongly each cue of the phantoms is tied to the label: the share of COVID-19 films carrying
    # it minus the share of the others, in [0, 1] (cmtlib.data.synth.ties). The defaults are today's
    # mild, realistic shortcuts; params/phantoms/clean.yaml sets all to 0, params/phantoms/<cue>.yaml
    # plants one at 0.8. Source: the film is from synth-b (the noisier site); view: AP.
    synth_source_strength: float = 0.153
    synth_view_strength: float = 0.283
    # The site's side marker: on 85 % of films whatever the label at 0.
    synth_marker_strength: float = 0.0
    # Planted cues, absent at 0: burned-in text, the film stored at half size, a collimation frame,
    # lines and tubes (ECG leads, central line, nasogastric tube, chest drain).
    synth_text_strength: float = 0.0
    synth_size_strength: float = 0.0
    synth_border_strength: float = 0.0
    synth_tubes_strength: float = 0.0
    # Films of a third site (source synth-c, a scanner look outside both training sites'), appended
    # after the synth_n films from their own random streams; hold them out with `holdout: [source=synth-c]`.
    synth_external_n: int = 0
    # Scale of every COVID-19 opacity's density (1.0: as drawn). Below 1 the disease is fainter, so that a
    # cue tied to the label competes with it: the audit's calibration trains some runs so (docs/audit.md).
    synth_covid_opacity: float = 1.0
    # Training / evaluation resolution (the cache size); the paper uses 224.
    image_size: int = 224
    # Patient-disjoint split fractions and seed (`cmt data split`).
    val_fraction: float = 0.15
    test_fraction: float = 0.2
    split_seed: int = 0
    # A ready cache folder (`cmt data cache`) to train from directly, skipping import/split/cache;
    # this is how a GPU machine without ../shared trains on real data.
    cache_dir: str = ""
    # Films held out entirely, to be judged as a collection the run never saw (cmtlib.data.holdout):
    # filters `column=value` or `column~pattern` (e.g. source=figure1; location~italy|canada). Films
    # sharing a patient or a duplicate group with them are excluded from training. [] = none.
    holdout: list[str] = field(default_factory=list)
    # Finding texts added to the vocabulary that turns findings into labels when data_kind imports
    # (as `cmt data import --finding`): "TEXT=CLASS", CLASS one of healthy, covid, other, unknown
    # (e.g. "Bronchiolitis=other"). A finding the vocabulary does not recognise gives no label. [] = none.
    findings: list[str] = field(default_factory=list)


@dataclass
class ModelConfig:
    # A name in cmtlib.models.registry (cmtnet, or a baseline such as resnet18).
    model: str = "cmtnet"
    # CMTNet tasks (paper's t1..t4 = lung, disease, healthy, multilabel); the ablation drops some,
    # keeping at least one segmentation task and multilabel (Table V).
    tasks: list[str] = field(default_factory=lambda: list(ALL_TASKS))
    # Channel multiplier on VGG16-BN (1.0 = the paper); 0.25 makes CPU runs feasible.
    width: float = 1.0
    # imagenet (torchvision's vgg16_bn weights from a local file or cache), none, or a path to a state_dict.
    encoder_weights: str = "imagenet"
    # Width of the two hidden layers in each 3-layer FC head (the paper gives none; 256 < D = 512 at width 1).
    head_hidden: int = 256
    # Model switches are constructor arguments of the models that declare them (cmtlib.models.base:
    # ContractModel.SWITCHES); a switch set on a model that does not declare it is refused.
    # Acquisition harmonisation: the network sees every film reduced to this many pixels and enlarged
    # back to image_size (in training, evaluation and `cmt predict` alike: it is part of the model),
    # so that resolution and sharpness, which differ by collection, stop naming the collection. 0 = off.
    effective_px: int = switch(0, "acquisition harmonisation: every film brought to {value} px effective resolution")
    # Lung focus: the classification heads read the film with everything outside the network's OWN
    # lung outline painted over and the lungs normalised (a second encoder pass; CMTNet with its lung
    # task). One mask source for every film, so the mask's shape cannot name a collection.
    lung_focus: bool = switch(False, "lung focus: the heads classify only the film's own lung region (the network's lung outline)")


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
    # Segmentation loss: bce (the paper: binary cross-entropy per pixel) or bce+dice (plus one minus the
    # soft Dice per image). A disease region is a few per cent of the film; with BCE alone a short run's
    # disease decoder can settle on predicting nothing, and then the classifier's features do not
    # localise the lesion either (the heat-map study, docs/explanations.md).
    seg_loss: str = "bce"
    eval_batch_size: int = 64
    # CPU threads for torch (0 = torch's default).
    threads: int = 0
    # Where the run folder goes; '' = runs/<params name>.
    run_dir: str = ""
    # Which checkpoint is best.pt: val_loss (lowest; covers every task), val_covid_auc (highest) or
    # last (the final epoch: with a cosine schedule the settled model; on small real collections the
    # validation loss can be lowest at an underfit first epoch while the AUC still rises).
    best_by: str = "val_loss"
    # Steps between progress-bar updates; each update waits for the device, so not every step.
    log_every: int = 10
    # constant (the paper) or cosine: lr decays per step along a half cosine to 0 at the last step
    # (short CPU runs end better; extending `epochs` on --resume then changes the schedule).
    lr_schedule: str = "constant"
    # Shortcut mitigations in training (issue 12; measured with `cmt mitigation`):
    # covid_loss_within: the COVID-19 loss counts only for films of collections whose COVID-19 labels
    # take both values in the training split; where a collection holds one class only, learning its
    # label teaches the collection's look, not the disease.
    covid_loss_within: bool = switch(False, "COVID-19 loss only on collections holding both labels")
    # balance_sources: batches drawn so that every collection x COVID-19 label stratum is equally
    # common (strata under balance_cap films weighted as if they had balance_cap; replaces
    # covid_oversample's repeats).
    balance_sources: bool = switch(False, "source-balanced sampling: every collection x COVID-19 label drawn equally often (cap {balance_cap})")
    balance_cap: int = 20
    # How the run's operating COVID-19 threshold (what `cmt predict`, the confusion tables and external
    # validation decide with) is chosen, once, on the validation films at the end of training
    # (cmtlib.metrics.operating): specificity:S (at most 1 - S of the validation negatives flagged)
    # or logit_normal:Q (a quantile of a curve fitted to their scores). The paper's 99 % point is
    # specificity:0.99; with the few dozen negatives of a small validation split it sits above every
    # one of them and flags almost nothing on a collection the run never saw.
    threshold_rule: str = "specificity:0.95"


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
    # How the report's task graph (the experiments and the pages, each page in a kernel of its own) runs
    # when `scheduler` names no cluster: 0 = a local Dask cluster sized to the machine (worker
    # processes x threads <= cores; one worker per GPU), N = N local worker processes, 1 = no cluster:
    # one task after another in this process, in order (debugging). `cmt report --jobs N` sets it.
    report_jobs: int = 0
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
    # encoder once per feature channel for every film (about 0.3 s a film at 88-96 px, width 0.125;
    # seconds at 224 px, full width), so a handful keeps the page fast; half are COVID-19 films
    # with a reference disease region, which the agreement measures need.
    report_cam_images: int = 8


@dataclass
class ExperimentsConfig:
    """What the experiments layer trains or evaluates beside a run: the comparison and CAM pages'
    baselines and seeds, and the external sets of the External validation page."""

    # Manifests of films from outside the run's collections, each judged at the run's frozen
    # threshold on the External validation page (every row; cmtlib.experiments.external). Films held
    # out by the data key `holdout` are judged there too. [] = none.
    external: list[str] = field(default_factory=list)

    # Deep baselines the comparison page trains, by params/baselines/<name>.yaml stem ([] = none:
    # the page then compares CMTNet with its embedding classifiers only). Each takes only its model
    # keys (model, tasks, width, encoder_weights, head_hidden) from its file and everything else
    # (data, split, optimiser, augmentation, metrics) from this run, so the comparison is like for like.
    report_baselines: list[str] = field(default_factory=lambda: [
        "densenet121", "mobilenet_v2", "resnet18", "vgg19", "unet", "segnet_lung", "segnet_disease", "maskrcnn"])
    # SVMs and random forest on this run's CMTNet embeddings (cmtlib.experiments.embedding_classifiers);
    # seconds each on a CPU, so all five by default, as in the paper's Table IV.
    report_embedding_classifiers: list[str] = field(default_factory=lambda: [
        "svm_sigmoid", "svm_rbf", "svm_poly", "svm_linear", "random_forest"])
    # Image side of the baselines and of a CMTNet trained beside them at the same setting; 0 = this
    # run's image_size. 64 px: the eight baselines train in a second process in about the time the
    # report's own run takes on the other core, so `make report` stays within its 5 minutes on 2
    # cores (params/paper.yaml sets 0: 224 px, as the paper).
    baseline_image_size: int = 64
    # Epochs of the baselines and of the CMTNet beside them; 0 = this run's epochs. One pass on the
    # CPU for the same budget (Mask R-CNN, the slowest, takes over a minute a pass at 64 px).
    baseline_epochs: int = 1
    # Training films Mask R-CNN sees (a seeded sample; validation cut to a quarter of it, test
    # complete so its masks are scored on the same films as the others); 0 = all. A Mask R-CNN step
    # costs about three CMTNet steps; 600 films (47 steps, under a minute at 64 px) is the fewest
    # that found the lungs in one pass (300 films, 27 steps: lung Dice 0; 600: 0.90).
    baseline_maskrcnn_max_images: int = 600
    # key=value settings applied to the baselines after their files: "width=1.0" for all,
    # "maskrcnn:model=maskrcnn_resnet50" for one (params/paper.yaml: full width, ImageNet starts).
    baseline_overrides: list[str] = field(default_factory=list)
    # The Dask scheduler (tcp://HOST:PORT) of an existing cluster that runs the report's and the studies'
    # task graphs ('' = a local cluster sized to this machine); `--scheduler` overrides it. Its workers
    # need this package, the data, the run folders and a Jupyter kernel on a shared file system (README).
    scheduler: str = ""
    # Training seeds of every deep model on the comparison page (CMTNet included): the paper's
    # Fig. 7 spread needs >= 3 (params/paper.yaml: [0, 1, 2]); one on the CPU, to fit the budget.
    report_seeds: list[int] = field(default_factory=lambda: [0])