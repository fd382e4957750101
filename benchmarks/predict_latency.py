"""Latency of `cmt predict` on one image on a CPU: the cold start and the warm prediction, split.

Builds a run folder holding a CMTNet at the size a real user predicts with (params/paper.yaml's
model: width 1.0, 224 px; random weights, saved through cmtlib.checkpoint so the real loading path
is timed), writes one 224-px grayscale PNG, then times

    cold   a fresh Python process: `import cmtlib.predict`, then `load_model` (checkpoint read and
           model rebuilt), each timed inside the process, beside the process's whole wall time;
           and `cmt predict RUN IMAGE --out DIR` end to end in a fresh process
    warm   `predict_files` on the image with the model loaded (Predictor passed in), N times:
           median and 90th percentile of the whole call, and of its parts measured apart:
           read + resize, forward (with the in-distribution check's descriptors gathered in the
           same pass), the check's verdict, overlay + JSON write; and the same whole call with the
           check left out (Predictor(..., check=False)), alternating with the first so that both
           see the same load: the check's share of a warm prediction is their ratio

and prints the machine (CPUs, torch threads, load average), which matters on a shared CPU.

    python benchmarks/predict_latency.py [--n 10] [--out results.json]
    python benchmarks/predict_latency.py --smoke       # 64 px, width 0.125: checks the script runs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

COLD = """
import json, sys, time
t0 = time.perf_counter()
import cmtlib.predict
t1 = time.perf_counter()
from cmtlib.run import Run
model, meta = Run(sys.argv[1]).load_model()
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1}))
"""


def machine() -> dict:
    import torch

    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "load_average": [round(v, 2) for v in os.getloadavg()],
            "torch": str(torch.__version__), "python": platform.python_version(), "processor": platform.processor() or platform.machine()}


def make_run(folder: Path, size: int, width: float, head_hidden: int) -> Path:
    """A run folder with checkpoints/best.pt of a randomly initialised CMTNet (paper.yaml's model) and,
    as training writes beside it, the inference-only checkpoints/model.pt that `cmt predict` reads."""
    import torch

    from cmtlib.checkpoint import make_checkpoint, save_checkpoint, save_inference_checkpoint
    from cmtlib.models.registry import build_model
    from cmtlib.params import load_params
    from cmtlib.run import Run, RunInfo

    params = load_params(REPO / "params" / "paper.yaml", {"image_size": size, "width": width, "head_hidden": head_hidden,
                                                          "encoder_weights": "none", "run_dir": str(folder)})
    torch.manual_seed(0)
    model = build_model(params.model)
    ckpt = make_checkpoint(model, None, config=params.flat(), epoch=1, history=[], best={"by": "val_loss", "value": 0.0, "epoch": 1}, image_size=size)
    run = Run(folder)
    save_checkpoint(ckpt, run.checkpoint("best"))
    save_inference_checkpoint(ckpt, run.checkpoint("model"))
    run.write_info(RunInfo(status="finished", model="cmtnet", threshold_rule="specificity:0.95"))
    run.write_threshold({"covid_threshold": 0.5, "threshold_rule": "specificity:0.95"})  # timing only: any threshold
    record_reference(run, model, size)
    return folder


def record_reference(run, model, size: int, n: int = 24) -> None:
    """An in-distribution reference as training records one (cmtlib.indist.fit), on n noisy variants
    of the timing film: its thresholds mean nothing, its cost at prediction is the real one."""
    import torch

    from cmtlib.indist import Descriptors, fit
    from cmtlib.inference import infer

    rng = np.random.default_rng(1)
    base = film_array(size)
    films = np.clip(base[None] * rng.uniform(0.8, 1.2, (n, 1, 1)) + rng.normal(0, 0.03, (n, size, size)), 0, 1).astype(np.float32)
    x = torch.from_numpy(films)[:, None].expand(-1, 3, -1, -1).contiguous()
    described = Descriptors()
    infer(model, [{"image": x[i:i + 4]} for i in range(0, n, 4)], on_batch=described)
    films_described = described.host()
    half = n // 2
    ref, _ = fit({k: v[:half] for k, v in films_described.items()}, {k: v[half:] for k, v in films_described.items()})
    run.write_indist(ref.to_arrays())


def film_array(size: int) -> np.ndarray:
    """A film as float (size, size) in [0, 1]: a bright body, two dark lungs, noise (content does not matter for timing)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = 0.75 - 0.45 * (((xx - 0.3) / 0.15) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1) - 0.45 * (((xx - 0.7) / 0.15) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1)
    return np.clip(img + rng.normal(0, 0.05, img.shape), 0, 1)


def write_film(path: Path, size: int) -> Path:
    """The film as an 8-bit grayscale PNG."""
    from PIL import Image

    Image.fromarray(np.rint(film_array(size) * 255).astype(np.uint8)).save(path)
    return path


def cold_start(run: Path, repeats: int) -> list[dict]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", COLD, str(run)], capture_output=True, text=True, check=True, cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
        rec = json.loads(done.stdout.strip().splitlines()[-1])
        rec["process_s"] = time.perf_counter() - t
        out.append(rec)
    return out


def cli_once(run: Path, image: Path, out_dir: Path, repeats: int) -> list[float]:
    """`cmt predict RUN IMAGE --out DIR` end to end in a fresh process: what a user waits for."""
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "cmtlib.cli", "predict", str(run), str(image), "--out", str(out_dir)], capture_output=True,
                       text=True, check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
        out.append(time.perf_counter() - t)
    return out


def _timed_call(run: Path, image: Path, out_dir: Path, predictor) -> float:
    from cmtlib.predict import predict_files

    t = time.perf_counter()
    (res,) = predict_files(run, [image], out_dir, predictor=predictor)
    if "error" in res:
        raise RuntimeError(res["error"])
    return time.perf_counter() - t


def warm(run: Path, image: Path, out_dir: Path, n: int) -> dict[str, list[float]]:
    """Whole predict_files calls with and without the in-distribution check, alternating, and the
    parts of one prediction timed apart."""
    from cmtlib.predict import Predictor, write_prediction

    predictor, without = Predictor(run), Predictor(run, check=False)
    if not predictor.reference.available:
        raise RuntimeError(f"the timing run has no in-distribution reference: {predictor.reference.why_not}")
    for p in (predictor, without):
        _timed_call(run, image, out_dir, p)  # first call: oneDNN primitives, lazy imports
    times: dict[str, list[float]] = {"total": [], "total_without_check": [], "read_resize": [], "forward": [], "descriptors": [], "check": [],
                                     "overlay_write": []}
    for _ in range(n):
        times["total"].append(_timed_call(run, image, out_dir, predictor))
        times["total_without_check"].append(_timed_call(run, image, out_dir, without))
    for _ in range(n):
        t0 = time.perf_counter()
        img, info, x = predictor.load(image)
        t1 = time.perf_counter()
        out, described = predictor.forward(x)
        t2 = time.perf_counter()
        predictor.verdict(described, info)
        t3 = time.perf_counter()
        result, maps = predictor.decide(image, img, info, out, described)
        write_prediction(result, img, maps, out_dir / "split.json", out_dir / "split_overlay.png")
        t4 = time.perf_counter()
        times["read_resize"].append(t1 - t0)
        times["forward"].append(t2 - t1)
        times["check"].append(t3 - t2)
        times["overlay_write"].append(t4 - t3)
    times["descriptors"] = descriptor_times(predictor, image, n)
    return times


def descriptor_times(predictor, image: Path, n: int) -> list[float]:
    """What the check adds inside the forward pass: `describe` on one image's outputs, timed alone."""
    import torch

    from cmtlib.indist import describe

    _, _, x = predictor.load(image)
    with torch.no_grad():
        outputs = {k: v.float() for k, v in predictor.model.eval()(x).items()}
    out = []
    for _ in range(n):
        t = time.perf_counter()
        describe(outputs, x)
        out.append(time.perf_counter() - t)
    return out


def stats(values: list[float]) -> dict[str, float]:
    return {"median_s": float(np.median(values)), "p90_s": float(np.percentile(values, 90)), "min_s": float(np.min(values)), "n": len(values)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224, help="model input side and the test image's side (paper: 224)")
    ap.add_argument("--width", type=float, default=1.0, help="CMTNet channel multiplier (paper: 1.0)")
    ap.add_argument("--head-hidden", type=int, default=256, help="hidden width of the heads (params/paper.yaml: 256)")
    ap.add_argument("--n", type=int, default=10, help="warm repetitions")
    ap.add_argument("--cold", type=int, default=3, help="cold-start repetitions (fresh processes)")
    ap.add_argument("--budget", type=float, default=1.5, help="warm median budget in seconds, for the verdict line")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in the warm part (0 = torch's default)")
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--smoke", action="store_true", help="64 px, width 0.125, 2 repetitions: checks the script runs")
    a = ap.parse_args(argv)
    if a.smoke:
        a.size, a.width, a.head_hidden, a.n, a.cold = 64, 0.125, 32, 2, 1
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    before = machine()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = make_run(tmp / "run", a.size, a.width, a.head_hidden)
        image = write_film(tmp / "film.png", a.size)
        cold = cold_start(run, a.cold)
        cli = cli_once(run, image, tmp / "cli", a.cold)
        times = warm(run, image, tmp / "out", a.n)
        read = run / "checkpoints" / "model.pt"
        ckpt_mb = (read if read.is_file() else run / "checkpoints" / "best.pt").stat().st_size / 2**20  # the file predict reads
    result = {
        "machine": before, "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "model": {"name": "cmtnet", "width": a.width, "image_size": a.size, "checkpoint_mib": round(ckpt_mb, 1)},
        "cold": {**{k: stats([c[k] for c in cold]) for k in ("import_s", "load_s", "process_s")}, "cli_predict_s": stats(cli)},
        "warm": {k: stats(v) for k, v in times.items()},
    }
    m = result["machine"]
    print(f"machine: {m['cpus']} CPUs, torch {m['torch']} with {m['torch_threads']} threads, load average {m['load_average']} "
          f"(after: {result['load_average_after']})")
    print(f"model: CMTNet width {a.width} at {a.size} px, checkpoint {ckpt_mb:.1f} MiB")
    c = result["cold"]
    print(f"cold start (fresh process, median of {a.cold}): import cmtlib.predict {c['import_s']['median_s']:.2f} s, "
          f"load_model {c['load_s']['median_s']:.2f} s, whole process {c['process_s']['median_s']:.2f} s; "
          f"`cmt predict RUN IMAGE` end to end {c['cli_predict_s']['median_s']:.2f} s")
    for k, label in (("total", "predict_files, model loaded"), ("read_resize", "  read + resize"), ("forward", "  forward (+ descriptors)"),
                     ("descriptors", "    of which the check's descriptors"), ("check", "  in-distribution verdict"), ("overlay_write", "  decision, overlay + JSON/PNG write"),
                     ("total_without_check", "predict_files without the in-distribution check")):
        s = result["warm"][k]
        print(f"warm {label}: median {s['median_s'] * 1000:.0f} ms, p90 {s['p90_s'] * 1000:.0f} ms (n={s['n']})")
    with_check, without = result["warm"]["total"]["median_s"], result["warm"]["total_without_check"]["median_s"]
    result["check_ratio"] = with_check / without
    print(f"the in-distribution check: warm median {with_check * 1000:.0f} ms with it, {without * 1000:.0f} ms without "
          f"(ratio {result['check_ratio']:.3f}, calls alternating)")
    ok = result["warm"]["total"]["median_s"] <= a.budget
    print(f"warm median {'within' if ok else 'OVER'} the {a.budget:.1f} s budget")
    result["within_budget"] = ok
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
