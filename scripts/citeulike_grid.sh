#!/usr/bin/env bash
# The CiteULike grid committed under results/citeulike, run in resumable slices: the cheaper methods on BPRMF and
# LightGCN first, then DE, HTD and DE+RRD (whose 30 teacher-width experts cost ~100x a student epoch) on BPRMF, then
# seed 0 of what is left on LightGCN and SimpleX (so that every method has a one-seed result on every backbone
# early), then LightGCN's other seeds, the registered variants, and the rest of SimpleX last. Killing it at any point
# and running it again resumes: finished cells are skipped by config hash, and a teacher or cell that was training
# resumes from its last checkpoint (every 10 min), so a later session or another machine continues where this one
# stopped.
#   nohup bash scripts/citeulike_grid.sh > citeulike-grid.log 2>&1 &
# RUN_ARGS is appended to every `kdbench run` (later options win), e.g. RUN_ARGS="--workers 1 --threads 1" to leave
# one core to another job such as scripts/citeulike_paper.sh.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-results/citeulike}
CHEAP=student,fitnet,freqd,kd,rd,cd,rrd,ftd
EXPERTS=de,htd,de+rrd
VARIANTS=freqd.nofilter,rrd.nosample
run_slice() {  # backbone methods [seeds [workers]]
    local seeds=${3:-0,1,2} workers=${4:-2}
    echo "=== slice: backbone $1, methods $2, seeds $seeds, $workers worker(s) ($(date -u +%FT%TZ))"
    python -m kdbench run --datasets citeulike --backbones "$1" --methods "$2" --seeds "$seeds" --profile cpu \
        --workers "$workers" --out "$OUT" --data-root "${KDBENCH_DATA:-../shared/datasets}" ${RUN_ARGS:-}
}
main() {
    for backbone in bprmf lightgcn; do run_slice "$backbone" "$CHEAP"; done
    run_slice bprmf "$EXPERTS"
    # SimpleX is the dearest backbone on 2 CPU cores (one thread: 59 s per teacher epoch, 15 s per student epoch,
    # with 2,000 negatives per pair); mid-training checkpoints carry its cells over sessions
    run_slice lightgcn "$EXPERTS" 0
    # a lone teacher trains with both cores (one worker, two threads); with two workers it would get one thread
    # while the other worker's cells wait for it
    run_slice simplex student 0 1
    run_slice simplex "$CHEAP,$EXPERTS" 0
    run_slice lightgcn "$EXPERTS"
    for backbone in bprmf lightgcn; do run_slice "$backbone" "$VARIANTS"; done
    run_slice simplex "$CHEAP,$EXPERTS,$VARIANTS"
    echo "=== grid done ($(date -u +%FT%TZ))"
}
main "$@"   # the whole script is read before it runs, so editing it during a run is safe
