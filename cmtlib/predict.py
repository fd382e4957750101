"""`cmt predict`: a trained run's decision on image files, folders and DICOM files.

Per image, into the output folder:
    <stem>.json          probabilities, the COVID decision at the run's operating threshold (fixed
                         at training, with the rule that chose it), the in-distribution verdict (cmtlib.indist:
                         verdict, score, each signal's distance and threshold, reasons in words), model and run,
                         and a research-use note. No DICOM identifiers
                         (patient name, ids, dates) are ever copied: only the file name, format and size.
    <stem>_overlay.png   the image with the predicted lung outline (green), the disease heat-map
                         (red, opacity = probability) and the decision written on it; drawn with
                         PIL only. It keeps the image's aspect ratio, its long side the image's own
                         clamped to [OVERLAY_MIN, OVERLAY_MAX] px (small films are enlarged so the
                         text stays readable, large ones reduced).
Images are read with cmtlib.data.io.read_image and resized exactly as the cache resizes them
(square, aspect ratio not kept), so the model sees what it saw in training.
A file that cannot be read gets an entry with an `error` message; the others go on.

A film the in-distribution check flags is not judged: its decision says NOT_JUDGED instead of a
COVID-19 call (`covid_suspected` null), its probabilities are still reported; `judge_anyway` (the
CLI's --judge-anyway) decides it at the threshold all the same, the verdict still reported beside.
A run without the check's record (or a model without an embedding) says the check is not available
and decides as before.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from cmtlib.errors import MissingInputError
from cmtlib.fileio import atomic_path, write_json
from cmtlib.indist import VERDICT_OUT, Descriptors, Reference, judge, unavailable
from cmtlib.inference import Inference, infer
from cmtlib.metrics.operating import describe_rule
from cmtlib.run import Run

log = logging.getLogger("cmtlib.predict")
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".dcm", ".dicom"})
OVERLAY_MIN, OVERLAY_MAX = 512, 1024
NOTE = "Research use only: not a medical device, not for diagnosis or treatment decisions."
NOT_JUDGED = "outside what this run was trained on: not judged"


def _is_dicom(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(132)[128:132] == b"DICM"


def collect_inputs(paths: Iterable[str | os.PathLike]) -> tuple[list[Path], list[dict[str, str]]]:
    """Image files to predict (folders searched recursively for PNG/JPEG/DICOM names and for DICOM
    files by content), and an error entry for each input that does not exist."""
    files: list[Path] = []
    missing: list[dict[str, str]] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = [f for f in sorted(p.rglob("*")) if f.is_file() and not f.name.startswith(".")]
            chosen = [f for f in found if f.suffix.lower() in IMAGE_SUFFIXES or _is_dicom(f)]
            if len(chosen) < len(found):
                log.info("%s: skipped %d file(s) that are neither PNG/JPEG by name nor DICOM by content", p, len(found) - len(chosen))
            files += chosen
        elif p.is_file():
            files.append(p)  # named explicitly: tried whatever its name, read_image says what it is
        else:
            missing.append({"input": str(p), "error": f"not found: {p}"})
    return files, missing


def _threshold(run: Run) -> tuple[float, str, str]:
    """(threshold, rule, where it comes from in words): the run's frozen operating threshold."""
    stored = run.threshold
    if stored is None or not run.finished:
        raise MissingInputError(f"{run.path} holds no frozen COVID-19 threshold (threshold.json): its training did not finish; "
                                "resume it (cmt train --params ... --resume) or train it again")
    rule = stored["threshold_rule"]
    return run.operating_threshold, rule, f"fixed when the run was trained, on its validation films: {describe_rule(rule)}"


class Predictor:
    """A loaded run: `predict(path)` -> (result dict, lung and disease probability maps).

    `judge_anyway`: decide flagged films too. `check=False` leaves the in-distribution check out (the
    verdict says not available): what benchmarks/predict_latency.py times the check against.
    """

    def __init__(self, run_dir: str | os.PathLike, which: str = "best", device: str = "cpu", *, judge_anyway: bool = False,
                 check: bool = True):
        self.run = Run.open(run_dir)
        self.run_dir = self.run.path
        self.model, self.meta = self.run.load_model(which, device)
        # NHWC is about 25 % faster for these convolutions on a CPU too (oneDNN).
        self.model.to(memory_format=torch.channels_last)
        self.device = torch.device(device)
        self.size = int(self.meta["preprocessing"]["input_size"][0])
        self.threshold, self.threshold_rule, self.threshold_source = _threshold(self.run)
        self.which = which
        self.judge_anyway = judge_anyway
        self.reference = Reference.from_arrays(self.run.indist) if check else Reference(why_not="left out on request")

    def load(self, path: Path) -> tuple[np.ndarray, dict[str, Any], torch.Tensor]:
        """Read and resize one image as the cache does.

        Returns:
            (image float (H, W) in [0, 1], read_image's info, model input (1, 3, S, S) channels_last).
        """
        from cmtlib.data.cache import resize_image  # the cache's own resize (Lanczos, uint8)
        from cmtlib.data.io import read_image

        image, info = read_image(path, target_size=self.size)
        x = torch.from_numpy(resize_image(image, self.size)).to(self.device).float().div_(255.0)
        return image, info, x.view(1, 1, self.size, self.size).expand(1, 3, -1, -1).contiguous(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> tuple[Inference, dict[str, np.ndarray]]:
        """The model's probabilities and lung / disease maps for a (1, 3, S, S) input (cmtlib.inference),
        and, from the same pass, what the in-distribution check reads (empty when it is left out)."""
        described = Descriptors() if self.reference.available else None
        out = infer(self.model, [{"image": x}], maps=("lung", "disease"), on_batch=described)
        return out, described.host() if described is not None else {}

    def verdict(self, described: dict[str, np.ndarray], info: dict[str, Any]) -> dict[str, Any]:
        """The in-distribution block of the JSON (cmtlib.indist.Verdicts.block)."""
        if not self.reference.available:
            return unavailable(self.reference.why_not)
        side = min(info["orig_size"]) if info.get("orig_size") else math.nan
        return judge(self.reference, described, np.array([side], dtype=float)).block(0, self.reference)

    def decide(self, path: Path, image: np.ndarray, info: dict[str, Any], out: Inference,
               described: dict[str, np.ndarray]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The JSON result and the lung / disease probability maps (S, S) from the model's outputs."""
        cols = out.columns
        probs: dict[str, float | None] = {name: None if math.isnan(cols[col][0]) else float(cols[col][0])
                                          for name, col in (("healthy", "p_healthy"), ("covid", "p_covid"), ("other_disease", "p_other"))}
        maps = {k: v[0] for k, v in out.maps.items()}
        verdict = self.verdict(described, info)
        judged = verdict["in_distribution"] is not False or self.judge_anyway
        covid = probs["covid"]
        suspected = None if covid is None or not judged else bool(covid >= self.threshold)
        if not judged:
            text = NOT_JUDGED
        else:
            text = "no COVID-19 output in this model" if suspected is None else ("COVID-19 suspected" if suspected else "COVID-19 not suspected")
        result = {
            "file": path.name,
            "run": self.run_dir.name,
            "model": self.meta["model"].get("name", ""),
            "checkpoint": {"which": self.which, "epoch": self.meta["epoch"]},
            "probabilities": probs,
            "decision": {"covid_suspected": suspected, "judged": judged, "text": text},
            "in_distribution": verdict,
            "threshold": self.threshold,
            "threshold_rule": self.threshold_rule,
            "threshold_source": self.threshold_source,
            "mitigations": self.run.mitigations,  # the shortcut mitigations the run trained with (the model applies them)
            "image": {"format": info.get("format", ""), "original_size": list(info.get("orig_size", image.shape)), "model_input_size": [self.size, self.size]},
            "lung_area_fraction": float((maps["lung"] >= 0.5).mean()) if "lung" in maps else None,
            "note": NOTE,
        }
        return result, maps

    def predict(self, path: Path) -> tuple[dict[str, Any], np.ndarray, dict[str, np.ndarray]]:
        """(result dict, the image read, lung and disease probability maps) for one file."""
        image, info, x = self.load(path)
        out, described = self.forward(x)
        result, maps = self.decide(path, image, info, out, described)
        return result, image, maps


def overlay(image: np.ndarray, maps: dict[str, np.ndarray], lines: list[str]):
    """The overlay as a PIL RGB image (`overlay_size` of the image's shape).

    Args:
        image: float (H, W) in [0, 1].
        maps: optional 'lung' and 'disease' probability maps (S, S) in [0, 1].
        lines: text written on a dark band at the top.
    """
    from PIL import Image, ImageDraw, ImageFilter, ImageFont

    size = overlay_size(*image.shape)
    base = Image.fromarray(np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)).resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0).convert("RGB")

    def upsampled(p: np.ndarray):
        return Image.fromarray(np.clip(np.rint(p * 255), 0, 255).astype(np.uint8)).resize(size, Image.Resampling.BILINEAR)

    if "disease" in maps:
        alpha = upsampled(maps["disease"]).point(lambda v: int(v * 0.6))  # opacity = 0.6 x probability
        base.paste(Image.new("RGB", size, (255, 40, 40)), (0, 0), alpha)
    if "lung" in maps:
        inside = upsampled(maps["lung"]).point(lambda v: 255 if v >= 128 else 0)
        width = max(3, 2 * (max(size) // 300) + 1)
        edge = Image.fromarray(np.asarray(inside) ^ np.asarray(inside.filter(ImageFilter.MinFilter(width))))
        base.paste(Image.new("RGB", size, (40, 220, 40)), (0, 0), edge)
    draw = ImageDraw.Draw(base)
    pad = max(2, size[1] // 120)
    font_size = max(10, size[1] // 28)
    font = ImageFont.load_default(size=font_size)
    while font_size > 8 and max(draw.textlength(t, font=font) for t in lines) > size[0] - 2 * pad:
        font_size -= 1  # the longest line must fit the width
        font = ImageFont.load_default(size=font_size)
    heights = [draw.textbbox((0, 0), t, font=font)[3] for t in lines]
    draw.rectangle([0, 0, size[0], sum(heights) + pad * (len(lines) + 1)], fill=(0, 0, 0))
    y = pad
    for text, th in zip(lines, heights):
        draw.text((pad, y), text, fill=(255, 255, 255), font=font)
        y += th + pad
    return base


def overlay_size(h: int, w: int) -> tuple[int, int]:
    """(width, height) of the overlay of an h x w image: same aspect ratio, long side clamped to
    [OVERLAY_MIN, OVERLAY_MAX]."""
    scale = min(max(1.0, OVERLAY_MIN / max(h, w)), OVERLAY_MAX / max(h, w))
    return max(1, round(w * scale)), max(1, round(h * scale))


def _fmt(p: float | None) -> str:
    return "n/a" if p is None or (isinstance(p, float) and math.isnan(p)) else f"{p:.2f}"


def write_prediction(result: dict[str, Any], image: np.ndarray, maps: dict[str, np.ndarray], json_path: Path, png_path: Path) -> None:
    """Write one image's JSON and overlay PNG (each atomically)."""
    probs = result["probabilities"]
    lines = [
        f"{result['decision']['text']}  (COVID p={_fmt(probs['covid'])}, threshold {_fmt(result['threshold'])})",
        f"healthy p={_fmt(probs['healthy'])}  other disease p={_fmt(probs['other_disease'])}  [{result['run']}]",
        "research use only",
    ]
    verdict = result["in_distribution"]
    if verdict["in_distribution"] is False:
        why = "; ".join(verdict["reasons"])
        lines.insert(1, f"why: {why}" if not result["decision"]["judged"] else f"judged anyway, though {VERDICT_OUT}: {why}")
    write_json(json_path, result)
    with atomic_path(png_path) as tmp:
        overlay(image, maps, lines).save(tmp, format="PNG", compress_level=1)


def predict_files(run_dir: str | os.PathLike, inputs: Iterable[str | os.PathLike], out_dir: str | os.PathLike, *, which: str = "best",
                  device: str = "cpu", predictor: Predictor | None = None, judge_anyway: bool = False) -> list[dict[str, Any]]:
    """Predict every image in `inputs`; returns one dict per image: 'input', and 'json' and
    'overlay' paths with the probabilities, the decision and the in-distribution verdict, or 'error'
    with the reason it failed. `judge_anyway`: decide films the check flags too (module docstring).

    `predictor`: a Predictor already loaded from `run_dir` (a notebook or service predicting again
    and again), so the checkpoint is not read and the model not rebuilt on every call.
    """
    from cmtlib.data.io import ImageReadError

    files, results = collect_inputs(inputs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if predictor is None:
        predictor = Predictor(run_dir, which, device, judge_anyway=judge_anyway)
    elif predictor.run_dir.resolve() != Path(run_dir).resolve():
        raise ValueError(f"the predictor was loaded from {predictor.run_dir}, not {run_dir}")
    elif judge_anyway and not predictor.judge_anyway:
        raise ValueError("judge_anyway was asked but the predictor given was loaded without it: Predictor(..., judge_anyway=True)")
    used: set[str] = set()
    for path in files:
        try:
            result, image, maps = predictor.predict(path)
        except (ImageReadError, OSError) as err:
            log.warning("%s: %s", path, err)
            results.append({"input": str(path), "error": str(err)})
            continue
        stem, i = path.stem, 1
        while stem in used:  # same name in two folders: a-2, a-3, ...
            i += 1
            stem = f"{path.stem}-{i}"
        used.add(stem)
        json_path, png_path = out / f"{stem}.json", out / f"{stem}_overlay.png"
        write_prediction(result, image, maps, json_path, png_path)
        probs = result["probabilities"]
        results.append({"input": str(path), "json": str(json_path), "overlay": str(png_path), **{f"p_{k}": v for k, v in probs.items()},
                        "covid_suspected": result["decision"]["covid_suspected"], "in_distribution": result["in_distribution"]["in_distribution"]})
    return results
