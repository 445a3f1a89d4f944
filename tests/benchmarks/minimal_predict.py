"""The baseline of bench_predict.py: what a user with torch alone writes to
predict with the .pt2 that `dist-train export` made. Loads it, predicts the
raw images in batches of 1024, and writes the same CSV columns as `dist-train
predict` (row, sample, class, class_name, probability).

    python tests/benchmarks/minimal_predict.py model.pt2 test.npy out.csv"""

import csv
import json
import sys
import time

import numpy as np
import torch

pt2, images, out = sys.argv[1:4]
extra = {"dist_train.json": ""}
model = torch.export.load(pt2, extra_files=extra).module()
names = json.loads(extra["dist_train.json"])["class_names"]
x = torch.from_numpy(np.load(images))
start = time.perf_counter()
found = []
with torch.no_grad():
    for lo in range(0, len(x), 1024):
        found.append(torch.softmax(model(x[lo:lo + 1024]), dim=1))
probs = torch.cat(found).numpy()
seconds = time.perf_counter() - start
classes = probs.argmax(axis=1)
with open(out, "w", newline="") as fh:
    writer = csv.writer(fh, lineterminator="\n")
    writer.writerow(["row", "sample", "class", "class_name", "probability"])
    for i, c in enumerate(classes):
        writer.writerow([i, i, int(c), names[c] if names else int(c), str(probs[i, c])])
print(f"predicted {len(x)} samples in {seconds:.2f}s ({len(x) / seconds:,.0f} samples/s)")
