"""Training and inference throughput of CMTNet on the real cached pipeline, side by side.

Every configuration trains through `cmtlib.engine.fit` on a cache folder (`cmt data cache`): the
split's uint8 images and masks resident on the device, augmentation on the device, the paper's
COVID oversampling. Each runs two epochs; the second epoch's images/s is reported (the first holds
cuDNN autotuning and, with torch.compile, compilation). The naive reference is the paper's
setting: fp32, eager, batch 16, default memory layout.

    python benchmarks/train_throughput.py --cache CACHE_DIR [--out results.json]
    python benchmarks/train_throughput.py --smoke          # tiny CPU run for the test suite

Needs only torch and torchvision (+ numpy, pandas, pyyaml, tqdm): runs on a bare GPU machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cmtlib.data.loader import EvalBatches, TrainBatches, load_split, open_cache_folder  # noqa: E402
from cmtlib.configs import ModelConfig, TrainConfig  # noqa: E402
from cmtlib.engine import fit  # noqa: E402
from cmtlib.losses import MultiTaskLoss  # noqa: E402
from cmtlib.models.registry import build_model  # noqa: E402
from cmtlib.models.segnet import SegNetDecoder  # noqa: E402
from cmtlib.runtime import autocast, autocast_dtype, describe_device, resolve_device  # noqa: E402

# Dense bf16 tensor-core peaks (NVIDIA datasheets, SXM parts), TFLOP/s.
BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}

CONFIGS = {
    # name: (batch, precision, channels_last, compile, unpool) -- unpool: SegNetDecoder.unpool_impl
    "reference fp32 eager b16": (16, "fp32", False, False, "scatter"),
    "bf16 channels_last b128": (128, "bf16", True, False, "scatter"),
    "bf16 channels_last b128 mask-unpool": (128, "bf16", True, False, "mask"),
    "bf16 channels_last b128 compile": (128, "bf16", True, True, "scatter"),
    "bf16 channels_last b128 compile mask-unpool": (128, "bf16", True, True, "mask"),
    "bf16 channels_last b256 compile mask-unpool": (256, "bf16", True, True, "mask"),
    "bf16 channels_last b384 compile mask-unpool": (384, "bf16", True, True, "mask"),
}


def build(width: float, unpool: str) -> torch.nn.Module:
    """CMTNet at `width`, random init, its SegNet decoders unpooling with `unpool` ("scatter" or "mask")."""
    model = build_model(ModelConfig(width=width, encoder_weights="none"))
    for m in model.modules():
        if isinstance(m, SegNetDecoder):
            m.unpool_impl = unpool
    return model


def training_flops_per_image(model: torch.nn.Module, size: int, device: torch.device) -> float:
    """FLOPs of one forward + backward per image (torch's FlopCounterMode, batch 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.rand(2, 3, size, size, device=device)
    counter = FlopCounterMode(display=False)
    with counter:
        out = model(x)
        sum(v.float().mean() for v in out.values()).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 2


def train_rate(cache, width: float, batch: int, precision: str, channels_last: bool, compile_: bool, unpool: str, device, val_n: int,
               epochs: int) -> dict:
    """`epochs` epochs through engine.fit; images/s over all but the first (warm-up, compilation)."""
    train = load_split(cache, "train", device)
    val = load_split(cache, "val", device)
    val.images, val.lung, val.disease = val.images[:val_n], val.lung[:val_n], val.disease[:val_n]
    val.targets = {k: v[:val_n] for k, v in val.targets.items()}
    torch.manual_seed(0)
    model = build(width, unpool)
    cfg = TrainConfig(epochs=epochs, batch_size=batch, precision=precision, channels_last=channels_last, compile=compile_, device=str(device))
    batches = TrainBatches(train, batch, seed=0, covid_oversample=cfg.covid_oversample, rotate_deg=cfg.rotate_deg,
                           translate_px=cfg.translate_px * train.size / 224, channels_last=channels_last)
    history = fit(model, MultiTaskLoss.from_config(cfg), batches, EvalBatches(val, 64, channels_last), cfg)
    later = [h["images_per_s"] for h in history[1:]]
    return {"images_per_s": len(later) / sum(1 / r for r in later), "first_epoch_images_per_s": history[0]["images_per_s"],
            "steps_per_epoch": len(batches), "train_loss": history[-1]["train_loss"]}


@torch.no_grad()
def inference_rate(cache, width: float, batch: int, device, iters: int, compile_: bool = False, unpool: str = "scatter") -> float:
    """Forward passes (all outputs) in bf16 autocast + channels_last, images/s."""
    data = load_split(cache, None, device)
    model = build(width, unpool).to(device).eval()
    model = model.to(memory_format=torch.channels_last)
    if compile_:
        model = torch.compile(model)
    amp = autocast_dtype("bf16" if device.type == "cuda" else "fp32", device)
    idx = torch.arange(batch, device=device) % len(data)
    x = data.images.index_select(0, idx).unsqueeze(1).float().div_(255).expand(-1, 3, -1, -1).contiguous(memory_format=torch.channels_last)
    for _ in range(3):
        with autocast(device, amp):
            model(x)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        with autocast(device, amp):
            model(x)
    _sync(device)
    return batch * iters / (time.perf_counter() - t0)


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _smoke_cache(tmp: Path) -> Path:
    from cmtlib.data.cache import build_cache
    from cmtlib.data.split import split_manifest
    from cmtlib.data.synth import make_synthetic

    manifest = make_synthetic(tmp / "synth", n=48, size=64, seed=0, workers=1)
    split = manifest.with_name("split.csv")  # beside the images: manifest paths are relative to its folder
    split_manifest(manifest, split, val=0.2, test=0.2, seed=0, find_duplicates=False)
    build_cache(split, size=64, out=tmp / "cache", workers=1)
    return tmp / "cache"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", help="cache folder at the benchmark size (cmt data cache ... --size 224)")
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated names from: " + "; ".join(CONFIGS))
    ap.add_argument("--infer-batch", type=int, default=256)
    ap.add_argument("--infer-iters", type=int, default=20)
    ap.add_argument("--val-n", type=int, default=64, help="validation images per epoch (kept small: this measures training)")
    ap.add_argument("--infer-compile", action="store_true", help="also time inference with torch.compile")
    ap.add_argument("--epochs", type=int, default=3, help="epochs per configuration; all but the first are timed")
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--smoke", action="store_true", help="tiny CPU run (64 px synthetic, width 0.125, small batches)")
    a = ap.parse_args(argv)
    device = resolve_device("auto")
    configs = {k: CONFIGS[k] for k in a.configs.split(",")}
    with tempfile.TemporaryDirectory() as tmp:
        if a.smoke:
            cache_dir, a.width, a.infer_batch, a.infer_iters, a.epochs = _smoke_cache(Path(tmp)), 0.125, 4, 2, 2
            configs = {"reference fp32 eager b4": (4, "fp32", False, False, "scatter"), "channels_last b8": (8, "fp32", True, False, "scatter"),
                       "channels_last b8 mask-unpool": (8, "fp32", True, False, "mask")}
        elif not a.cache:
            ap.error("--cache is required (or --smoke)")
        else:
            cache_dir = Path(a.cache)
        cache = open_cache_folder(cache_dir)
        results = {"device": describe_device(device), "torch": torch.__version__, "platform": platform.platform(),
                   "cache": str(cache_dir), "images": int(cache.images.shape[0]), "size": cache.size, "width": a.width, "train": {}}
        model = build_model(ModelConfig(width=a.width, encoder_weights="none")).to(device)
        results["train_gflop_per_image"] = training_flops_per_image(model, cache.size, device) / 1e9
        del model
        print(f"{results['device']}; {results['images']} cached images at {cache.size} px; width {a.width}; "
              f"{results['train_gflop_per_image']:.0f} GFLOP per training image", flush=True)
        results["inference_images_per_s"] = inference_rate(cache, a.width, a.infer_batch, device, a.infer_iters)
        print(f"infer  bf16 channels_last b{a.infer_batch}: {results['inference_images_per_s']:.0f} images/s", flush=True)
        if a.infer_compile:
            for unpool in ("scatter", "mask"):
                key = "inference_compiled_images_per_s" + ("" if unpool == "scatter" else "_mask_unpool")
                results[key] = inference_rate(cache, a.width, a.infer_batch, device, a.infer_iters, True, unpool)
                print(f"infer  bf16 channels_last b{a.infer_batch} compiled, {unpool} unpool: {results[key]:.0f} images/s", flush=True)
        peak = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in results["device"]), None)
        for name, (batch, precision, cl, comp, unpool) in configs.items():
            t0 = time.perf_counter()
            try:
                r = train_rate(cache, a.width, batch, precision, cl, comp, unpool, device, a.val_n, a.epochs)
            except Exception as err:  # one failed configuration must not hide the others' figures
                r = {"error": f"{type(err).__name__}: {err}"}
            r["wall_s"] = time.perf_counter() - t0
            if "images_per_s" in r and peak:
                r["share_of_bf16_peak"] = r["images_per_s"] * results["train_gflop_per_image"] / (peak * 1e3)
            results["train"][name] = r
            print(f"train  {name:34s} {json.dumps(r)}", flush=True)
            if a.out:  # after each configuration: a later timeout keeps what was measured
                Path(a.out).write_text(json.dumps(results, indent=2))
            if device.type == "cuda":
                torch.cuda.empty_cache()
        ref = next(iter(results["train"].values())).get("images_per_s")
        for name, r in results["train"].items():
            if ref and "images_per_s" in r:
                r["ratio_to_reference"] = r["images_per_s"] / ref
    for name, r in results["train"].items():
        if "images_per_s" in r:
            print(f"  {name:34s} {r['images_per_s']:8.1f} images/s  x{r.get('ratio_to_reference', float('nan')):.2f}"
                  + (f"  {100 * r['share_of_bf16_peak']:.0f} % of bf16 peak" if "share_of_bf16_peak" in r else ""))
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
