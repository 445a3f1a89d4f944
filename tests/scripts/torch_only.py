"""Run by tests in a fresh interpreter: what a user with torch alone does with
the .pt2 that `dist-train export` writes. For each (PT2, X.npy, Y.npy, OUT.npy):
load it with torch.export.load, predict from the raw inputs, save the outputs,
and compute the metrics the run reported (accuracy; regression: MSE, MAE and
R^2 per output averaged over outputs). Prints one JSON line per model, and
fails if anything imported dist_train."""

import json
import sys

import numpy as np
import torch

for pt2, x_path, y_path, out_path in zip(*[iter(sys.argv[1:])] * 4):
    extra = {"dist_train.json": ""}
    model = torch.export.load(pt2, extra_files=extra).module()
    meta = json.loads(extra["dist_train.json"])
    x, y = torch.from_numpy(np.load(x_path)), np.load(y_path)
    with torch.no_grad():
        outputs = model(x).numpy()
    np.save(out_path, outputs)
    if meta["task"] == "classification":
        found = {"accuracy": float((outputs.argmax(axis=1) == y).mean())}
    else:
        y = y.reshape(len(y), -1).astype(np.float64)
        error = outputs.reshape(len(y), -1).astype(np.float64) - y
        r2 = 1 - (error ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0)
        found = {"mse": float((error ** 2).mean()), "mae": float(np.abs(error).mean()), "r2": float(r2.mean())}
    print(json.dumps({"pt2": pt2, "task": meta["task"], "class_names": meta["class_names"], **found}), flush=True)

if any(name == "dist_train" or name.startswith("dist_train.") for name in sys.modules):
    sys.exit("dist_train was imported")
