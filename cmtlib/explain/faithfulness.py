"""Two checks of a heat map that need no lesion outline, so real films get them too.

Faithfulness (ROAD, Rong et al. 2022, pytorch-grad-cam's `ROADCombined`): the pixels a map ranks
highest are removed and filled in from their neighbours (noisy linear imputation, which does not
leave the map's shape in the film), and so are the lowest-ranked; a faithful map's most relevant
pixels matter more to the COVID-19 probability than its least relevant ones. The score, averaged
over `PERCENTILES` of pixels removed, is (drop when the least relevant go - drop when the most
relevant go) / 2: positive for a faithful map. It is compared, film by film, with the same score of a
random ordering of the pixels (`gain` = map - random), with a patient-bootstrap 95 % interval: a map
is faithful when that interval lies above 0.

Randomisation (Adebayo et al. 2018, "Sanity checks for saliency maps"): the classifier's weights
are re-initialised from the top down (the heads, then each encoder block) and the map made again;
the rank correlation (Spearman) between each film's original and new map says how much of the map
came from what the network learned. A map that barely changes when every weight is random explains
nothing about this network: the check passes when the median correlation with the fully
randomised classifier is below `RANDOMISATION_BAR`.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
from torch import nn

from cmtlib.explain.cam import HeadLogits, normalise_maps
from cmtlib.inference import as_batch, model_device
from cmtlib.metrics import bootstrap_ci

# Shares of pixels removed (most / least relevant first). Two levels keep ROAD within a page's budget
# (it solves a sparse system per film, map and level); on the clean phantoms' default run 20/40/60/80 gave
# the same gain for the default map (0.289 against 0.293, 30 films).
PERCENTILES = (30, 70)
RANDOMISATION_BAR = 0.5  # median rank correlation with the fully randomised classifier must stay below this


class CovidProbability:
    """A pytorch-grad-cam target: the sigmoid probability of one logit of a film's output (K,)."""

    def __init__(self, index: int = 0):
        self.index = index

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(output[..., self.index])


def focused(model: nn.Module, images) -> torch.Tensor:
    """The input the model's heads classify (cmtlib.models.base.ContractModel.focus_input), (N, 3, H, W)."""
    x = as_batch(images, model_device(model))
    if hasattr(model, "focus_input"):
        with torch.no_grad():
            x = model.eval().focus_input(x)
    return x


def road(model: nn.Module, images, maps: np.ndarray, target_index: int = 0, percentiles=PERCENTILES, seed: int = 0,
         batch_size: int = 16) -> np.ndarray:
    """ROADCombined score of each film's map for the COVID-19 probability (module docstring). (N,)

    The imputation adds noise from torch's generator, seeded here, so a call repeats exactly.
    """
    from pytorch_grad_cam.metrics.road import ROADCombined

    x = focused(model, images)
    wrapper = HeadLogits(model, "multilabel").eval()
    metric = ROADCombined(percentiles=list(percentiles))
    maps = normalise_maps(maps)
    torch.manual_seed(seed)
    out = []
    with warnings.catch_warnings():
        # pytorch-grad-cam turns tensors into arrays the way NumPy 2 deprecates; nothing of ours to fix
        warnings.filterwarnings("ignore", message="__array_wrap__ must accept context", category=DeprecationWarning)
        for start in range(0, len(x), batch_size):
            xb = x[start:start + batch_size]
            out.append(np.asarray(metric(xb, maps[start:start + batch_size], [CovidProbability(target_index)] * len(xb), wrapper), float).ravel())
    return np.concatenate(out) if out else np.zeros(0)


def random_maps(n: int, shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A random ordering of every film's pixels: uniform noise. (n, H, W) float32"""
    return np.random.default_rng(seed).random((n, *shape), dtype=np.float32)


def faithfulness(model: nn.Module, images, maps: dict[str, np.ndarray], patients, seed: int = 0) -> pd.DataFrame:
    """Per map and film: road (the map's score), road_random (a random ordering's, the same per film for
    every map) and gain = road - road_random."""
    x = as_batch(images)
    baseline = road(model, x, random_maps(len(x), tuple(x.shape[-2:]), seed), seed=seed)
    rows = []
    for name, m in maps.items():
        score = road(model, x, m, seed=seed)
        rows.append(pd.DataFrame({"map": name, "patient_id": np.asarray(patients).astype(str), "road": score,
                                  "road_random": baseline, "gain": score - baseline}))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["map", "patient_id", "road", "road_random", "gain"])


def faithfulness_summary(per_film: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per map: mean road, mean road_random, mean gain with its patient-bootstrap 95 % interval, n, and
    `faithful` (the interval above 0)."""
    rows = []
    for name in dict.fromkeys(per_film["map"]):
        part = per_film[per_film["map"] == name]
        ci = bootstrap_ci("mean", part["gain"].to_numpy(float), part["patient_id"].to_numpy(), n_boot=n_boot, seed=seed)
        rows.append({"map": name, "road": float(part["road"].mean()), "road_random": float(part["road_random"].mean()),
                     "gain": ci.estimate, "ci_low": ci.low, "ci_high": ci.high, "n": len(part), "faithful": bool(ci.low > 0)})
    return pd.DataFrame(rows, columns=["map", "road", "road_random", "gain", "ci_low", "ci_high", "n", "faithful"])


# ---- the randomisation check ----------------------------------------------------------------

def cascade(model: nn.Module) -> list[tuple[str, list[nn.Module]]]:
    """The classifier's parts from the top down, each step adding one: the heads, then each encoder
    block from the last (models with ``encoder.blocks``), else the whole encoder."""
    heads = [m for m in (getattr(model, "healthy_head", None), getattr(model, "multilabel_head", None)) if m is not None]
    steps = [("heads", heads)]
    blocks = getattr(getattr(model, "encoder", None), "blocks", None)
    if blocks is not None:
        for k in range(len(blocks) - 1, -1, -1):
            steps.append((f"+ block {k + 1}", [blocks[k]]))
    elif getattr(model, "encoder", None) is not None:
        steps.append(("+ encoder", [model.encoder]))
    return steps


def _reinitialise(modules: list[nn.Module]) -> None:
    for module in modules:
        for sub in module.modules():
            if hasattr(sub, "reset_parameters"):
                sub.reset_parameters()
            if hasattr(sub, "reset_running_stats"):
                sub.reset_running_stats()


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation of two maps; 0 where a map is flat (a map that vanished has changed)."""
    from scipy.stats import spearmanr

    a, b = a.ravel(), b.ravel()
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(spearmanr(a, b).statistic)


def randomisation_check(model: nn.Module, images, make_maps: Callable[[nn.Module, object], np.ndarray], seed: int = 0,
                        original: np.ndarray | None = None) -> pd.DataFrame:
    """Cascading randomisation (module docstring): per step, what is random and the median and mean
    rank correlation over films between the original and the new maps.

    Args:
        make_maps: (model, images) -> (N, H, W) maps; called on copies of the model.
        original: the trained model's maps of `images` when the caller has them (else made here).
    """
    original = make_maps(model, images) if original is None else np.asarray(original)
    keep = np.ptp(original.reshape(len(original), -1), axis=1) > 0  # a film whose own map is flat says nothing
    rand = copy.deepcopy(model).eval()
    torch.manual_seed(seed)
    rows, done = [], []
    for name, modules in cascade(rand):
        _reinitialise(modules)
        done.append(name)
        new = make_maps(rand, images)
        rho = np.array([_spearman(a, b) for a, b in zip(original[keep], new[keep])])
        rows.append({"step": len(done), "randomised": " ".join(done), "median_spearman": float(np.median(rho)) if rho.size else np.nan,
                     "mean_spearman": float(rho.mean()) if rho.size else np.nan, "n": int(rho.size)})
    return pd.DataFrame(rows)


def passes_randomisation(table: pd.DataFrame) -> bool:
    """The map changed once every weight of the classifier was random (the last step's median < RANDOMISATION_BAR)."""
    return bool(len(table) and table["median_spearman"].iloc[-1] < RANDOMISATION_BAR)
