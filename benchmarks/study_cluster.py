"""A study one run after another (`--jobs 1`) against the same study on the local Dask cluster.

    python benchmarks/study_cluster.py                 # 4 smoke-size runs (params/smoke.yaml x seeds 0-3)
    python benchmarks/study_cluster.py --runs 6 --set epochs=2
    python benchmarks/study_cluster.py --smoke         # 2 tiny runs, for the tests

The data is prepared first (not timed: both modes would share it); then the study runs with no
cluster, then on a local cluster sized to this machine, each into a fresh folder, and the wall times
and their ratio are printed with the machine and its load average (this 2-core machine is shared:
compare only figures measured side by side). The cluster's start and stop (seconds) count in its
time, so it pays only when runs take longer than that. Every run's metrics.json must be the same in
both modes (apart from the folder it names); the script exits non-zero otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = {"synth_n": 120, "synth_size": 32, "image_size": 32, "eval_batch_size": 32}


def metrics(run_dir: str) -> dict:
    m = json.loads((Path(run_dir) / "metrics.json").read_text())
    m.pop("evaluation", None)  # where it was written
    return m


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(REPO / "params" / "smoke.yaml"))
    ap.add_argument("--runs", type=int, default=4, help="runs: the params file at seeds 0..runs-1")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--smoke", action="store_true", help="2 tiny runs (120 films at 32 px)")
    ap.add_argument("--out", default="", help="keep the two study folders here (default: a temporary folder)")
    a = ap.parse_args(argv)
    from cmtlib.data.prepare import prepare_data
    from cmtlib.experiments.study import run_study
    from cmtlib.params import load_params, parse_overrides

    overrides = {"threads": 1, **(TINY if a.smoke else {}), **parse_overrides(a.set)}
    params = load_params(a.params, overrides)
    runs = 2 if a.smoke else a.runs
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(a.out or tmp).resolve()
        os.environ.setdefault("CMT_DATA_DIR", str(root / "data"))
        t0 = time.perf_counter()
        prepare_data(params)
        print(f"data prepared in {time.perf_counter() - t0:.1f} s (not timed below)", flush=True)
        rows, results = [], {}
        for mode, jobs in (("one after another (--jobs 1)", 1), ("local Dask cluster", 0)):
            load = os.getloadavg()[0]
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # the runs' own progress (--jobs 1)
                out = run_study([(params.run_name, params)], root / f"jobs{jobs}", seeds=list(range(runs)), jobs=jobs, say=lambda line: None)
            wall = time.perf_counter() - t0
            bad = [o for o in out if not o.done]
            if bad:
                print(f"{mode}: {len(bad)} run(s) did not finish: {bad[0].error}", file=sys.stderr)
                return 1
            results[jobs] = [metrics(o.run_dir) for o in out]
            rows.append((mode, wall, load, len({o.worker for o in out}), sum(o.seconds for o in out) / len(out)))
    same = results[1] == results[0]
    print(f"\nmachine: {platform.platform()}, {os.cpu_count()} CPUs; {runs} runs of {Path(a.params).name} "
          f"({params.data.image_size} px, {params.train.epochs} epoch(s), threads 1)")
    print(f"{'mode':32s} {'wall s':>8s} {'s per run':>10s} {'load before':>12s} {'workers':>8s}")
    for mode, wall, load, workers, each in rows:
        print(f"{mode:32s} {wall:8.1f} {each:10.1f} {load:12.1f} {workers:8d}")
    print(f"ratio (one after another / cluster): {rows[0][1] / rows[1][1]:.2f}")
    print(f"metrics.json identical in both modes: {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
