#!/usr/bin/env bash
# `make report`'s chain in two checkouts, back to back, each from no data/ and no reports/default:
# without page 7 and in full, so that the whole chain and page 7's share can be compared.
#   git worktree add --detach ../before <commit> && ln -s "$PWD/.venv" ../before/.venv
#   benchmarks/report_side_by_side.sh ../before .     # one line per run: wall seconds, load average
# Each checkout's own cmtlib runs (PYTHONPATH), with the environment of the checkout's .venv.
set -u
[ $# -ge 2 ] || { echo "usage: $0 BEFORE_DIR AFTER_DIR" >&2; exit 2; }
without7='report_notebooks=[01,02,03,04,05,06,08,09,10]'
one() {  # checkout, label, extra args...
  local dir label start end rc load0
  dir=$(cd "$1" && pwd); label=$2; shift 2
  (cd "$dir" && rm -rf data reports/default)
  load0=$(cut -d' ' -f1 /proc/loadavg); start=$(date +%s.%N)
  (cd "$dir" && PYTHONPATH=$dir .venv/bin/python -m cmtlib.cli report --params params/default.yaml "$@" \
      > "/tmp/report_side_by_side_$(basename "$dir")_$label.log" 2>&1)
  rc=$?; end=$(date +%s.%N)
  echo "$dir $(git -C "$dir" rev-parse --short HEAD) $label: exit $rc, $(python3 -c "print(round($end - $start, 1))") s, load $load0 -> $(cut -d' ' -f1 /proc/loadavg)"
}
for dir in "$1" "$2"; do one "$dir" without-page-7 --set "$without7"; done
for dir in "$1" "$2"; do one "$dir" full; done
