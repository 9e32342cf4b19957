#!/usr/bin/env bash
# Issue #4's run: every built-in method on CiteULike with the spec's `paper` protocol (teachers of 400, 2000 and
# 500 dimensions for BPRMF, LightGCN and SimpleX), seed 0, into results/citeulike-paper. Per backbone, the teacher
# trains first with both cores (a one-worker run of the student and KD cells, whose teacher task trains it with two
# threads unless both cells are done), then the other cells run two at a time. Killing it and running it again
# resumes: finished cells are skipped, and a teacher or cell that was training resumes from its checkpoint (saved
# every 10 min under the cache dir).
#   nohup bash scripts/citeulike_paper.sh > citeulike-paper.log 2>&1 &
# BACKBONES chooses the backbones (default all three); RUN_ARGS is appended to every `kdbench run` (later options
# win), e.g. BACKBONES=bprmf RUN_ARGS="--workers 1 --threads 1" beside a one-worker grid.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-results/citeulike-paper}
run() {
    python -m kdbench run --datasets citeulike --seeds 0 --profile paper --out "$OUT" \
        --data-root "${KDBENCH_DATA:-../shared/datasets}" "$@" ${RUN_ARGS:-}
}
for backbone in ${BACKBONES:-bprmf lightgcn simplex}; do
    echo "=== $backbone: teacher, student and KD ($(date -u +%FT%TZ))"
    run --backbones "$backbone" --methods student,kd --workers 1
    echo "=== $backbone: every method ($(date -u +%FT%TZ))"
    run --backbones "$backbone" --methods student,fitnet,freqd,kd,rd,cd,rrd,ftd,de,htd,de+rrd --workers 2
done
echo "=== done ($(date -u +%FT%TZ))"
