"""Check the committed CiteULike metrics from a run's top-50 lists, without kdbench.

    python verify_topk.py RUN_DIR/cells [path/to/citeulike-t/users.dat.gz]

Rebuilds the test split from the raw CiteULike-t file with the documented recipe (users with >= 5 interactions;
each user's line, in file order, cut at max(floor(0.8n), 1) and floor(0.9n): the tail is test), then recomputes
Recall@20 and NDCG@20 (IDCG over min(|test|, 20)) from each cell's .npz top-50 lists (ids as in the file) and
compares them with the cell's JSON record.
"""
import glob
import gzip
import json
import math
import os
import sys

import numpy as np

cells = sys.argv[1]
raw = sys.argv[2] if len(sys.argv) > 2 else os.path.join(os.path.dirname(__file__), "../../../shared/datasets/"
                                                                                    "citeulike-t/users.dat.gz")
test = {}
with gzip.open(raw, "rt") as fh:
    for user, line in enumerate(fh):
        items = list(dict.fromkeys(int(t) for t in line.split()[1:]))  # drop repeats, keep order
        n = len(items)
        if n < 5:
            continue
        b = max(int(math.floor(0.9 * n)), max(int(math.floor(0.8 * n)), 1))
        if items[b:]:
            test[user] = set(items[b:])

for npz in sorted(glob.glob(os.path.join(cells, "*.npz"))):
    z = np.load(npz)
    rec = json.load(open(npz[:-4] + ".json"))
    recall, ndcg = [], []
    for u, top in zip(z["users"], z["topk"]):
        g = test[int(u)]
        hits = [int(i) in g for i in top[:20]]
        recall.append(sum(hits) / len(g))
        ndcg.append(sum(h / math.log2(r + 2) for r, h in enumerate(hits))
                    / sum(1 / math.log2(r + 2) for r in range(min(len(g), 20))))
    assert set(int(u) for u in z["users"]) == set(test), "users differ from the rebuilt test split"
    ok = (abs(np.mean(recall) - rec["metrics"]["recall@20"]) < 1e-6
          and abs(np.mean(ndcg) - rec["metrics"]["ndcg@20"]) < 1e-6)
    print(f"{os.path.basename(npz):45s} recall@20 {np.mean(recall):.6f} ndcg@20 {np.mean(ndcg):.6f} "
          f"record {rec['metrics']['recall@20']:.6f} {rec['metrics']['ndcg@20']:.6f} {'OK' if ok else 'MISMATCH'}")
