"""Time the report chain per notebook: `cmt report` once, then its timings.json as a table.

    python benchmarks/report_timing.py [--params params/default.yaml] [--out DIR] [--set KEY=VALUE ...]
    python benchmarks/report_timing.py --from reports/default    # the table of a report already made

Wall time includes data preparation (skipped when the data folder already holds this data),
training and evaluation (inside notebook 02), every page and its rendering. Prints the machine's
CPU count and load average, since this 2-core machine is often shared.
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params/default.yaml")
    ap.add_argument("--out", help="report folder (default: a temporary folder, removed afterwards)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed on to cmt report")
    ap.add_argument("--from", dest="existing", help="print the table of this report folder's timings.json; run nothing")
    a = ap.parse_args(argv)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(a.existing or a.out or Path(tmp) / "report")
        t0 = time.perf_counter()
        rc = 0
        if not a.existing:
            sets = [arg for kv in a.set for arg in ("--set", kv)]
            rc = subprocess.call([sys.executable, "-m", "cmtlib.cli", "report", "--params", a.params, "--out", str(out), *sets])
        wall = time.perf_counter() - t0 if not a.existing else float("nan")
        timings_file = out / "timings.json"
        if not timings_file.is_file():
            print(f"no timings.json in {out}: the chain stopped before writing it (exit {rc})", file=sys.stderr)
            return rc or 1
        timings = json.loads(timings_file.read_text())
    if a.existing:
        print(f"\nfrom {out}/timings.json (timed where that report ran)")
    else:
        print(f"\nmachine: {platform.platform()}, {os.cpu_count()} CPUs, load average {load_before[0]:.1f} before / "
              f"{os.getloadavg()[0]:.1f} after; params {a.params}; exit {rc}")
    print(f"{'notebook':28s} {'execute s':>10s} {'render s':>9s}  status")
    for name, t in timings["notebooks"].items():
        print(f"{name:28s} {t['execute_s'] or 0:10.1f} {t['render_s'] or 0:9.2f}  {t['status']}")
    print(f"{'chain total':28s} {timings['total_s']:10.1f}")
    if not a.existing:
        print(f"{'wall (cmt report)':28s} {wall:10.1f}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
