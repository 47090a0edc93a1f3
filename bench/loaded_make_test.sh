#!/usr/bin/env bash
# `make test` N times in a row (default 10) in a clean clone of this checkout's HEAD, with both
# cores kept busy by two other processes: the suite must not flake on a loaded 2-core machine.
#   bench/loaded_make_test.sh [N] [WORKDIR]     one line per run in WORKDIR/summary
set -u
n="${1:-10}"
work="${2:-/tmp/kdns-loaded}"
src="$(cd "$(dirname "$0")/.." && pwd)"
rm -rf "$work" && mkdir -p "$work" && git clone -q "$src" "$work/clone" && cd "$work/clone"
echo "commit $(git rev-parse --short HEAD)" > "$work/summary"
python3 -c 'while True: pass' & b1=$!
python3 -c 'while True: pass' & b2=$!
trap 'kill $b1 $b2' EXIT
failed=0
for i in $(seq "$n"); do
    start=$(date +%s)
    if make test > "$work/run$i.log" 2>&1; then result=pass; else result=FAIL; failed=1; fi
    echo "run $i $result $(( $(date +%s) - start )) s" \
        "$(grep -E 'passed|failed' "$work/run$i.log" | tail -2 | tr '\n' ' ')" >> "$work/summary"
done
cat "$work/summary"
exit $failed
