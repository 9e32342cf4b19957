#!/usr/bin/env bash
# The CiteULike grid committed under results/citeulike, run in resumable slices: the cheaper methods on BPRMF and
# LightGCN first, then DE, HTD and DE+RRD (whose 30 teacher-width experts cost ~100x a student epoch), then the
# registered variants, and SimpleX last. Killing it at any point and running it again resumes: finished cells are
# skipped by config hash, and a teacher or cell that was training resumes from its last checkpoint (every 10 min),
# so a later session or another machine continues where this one stopped.
#   nohup bash scripts/citeulike_grid.sh > citeulike-grid.log 2>&1 &
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-results/citeulike}
CHEAP=student,fitnet,freqd,kd,rd,cd,rrd,ftd
EXPERTS=de,htd,de+rrd
VARIANTS=freqd.nofilter,rrd.nosample
run_slice() {
    echo "=== slice: backbone $1, methods $2 ($(date -u +%FT%TZ))"
    python -m kdbench run --datasets citeulike --backbones "$1" --methods "$2" --seeds 0,1,2 --profile cpu \
        --workers 2 --out "$OUT" --data-root "${KDBENCH_DATA:-../shared/datasets}"
}
main() {
    for backbone in bprmf lightgcn; do run_slice "$backbone" "$CHEAP"; done
    for backbone in bprmf lightgcn; do run_slice "$backbone" "$EXPERTS"; done
    for backbone in bprmf lightgcn; do run_slice "$backbone" "$VARIANTS"; done
    # SimpleX last: on 2 CPU cores its 500-d teacher needs ~26 s per epoch and a student ~8.5 s (2,000 negatives
    # per pair); mid-training checkpoints carry them over sessions
    run_slice simplex "$CHEAP,$EXPERTS,$VARIANTS"
    echo "=== grid done ($(date -u +%FT%TZ))"
}
main "$@"   # the whole script is read before it runs, so editing it during a run is safe
