#!/usr/bin/env bash
# The CiteULike grid committed under results/citeulike, run in resumable slices: the cheaper methods on every
# backbone first, then DE and HTD (whose 30 teacher-width experts cost ~100x a student epoch). Killing it at any
# point and running it again resumes: finished cells are skipped by config hash.
#   nohup bash scripts/citeulike_grid.sh > citeulike-grid.log 2>&1 &
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-results/citeulike}
CHEAP=student,fitnet,freqd,kd,rd,cd,rrd,ftd
for slice in "bprmf $CHEAP" "lightgcn $CHEAP" "simplex $CHEAP" "bprmf de,htd" "lightgcn de,htd" "simplex de,htd"; do
    set -- $slice
    echo "=== slice: backbone $1, methods $2 ($(date -u +%FT%TZ))"
    python -m kdbench run --datasets citeulike --backbones "$1" --methods "$2" --seeds 0,1,2 --profile cpu \
        --workers 2 --out "$OUT" --data-root "${KDBENCH_DATA:-../shared/datasets}"
done
echo "=== grid done ($(date -u +%FT%TZ))"
