"""Shared by the probes in this folder: validation rows, the 15-epoch CPU recipe, train-and-score.

Probes are one-off experiments kept verbatim (only paths made relative) so their recorded numbers can be
reproduced; they are not library code. Results: benchmarks/results/probes.md. Rows: train 0-4,999 protected,
train 8,000-9,999 held out (the validation slice of issue 3; no test row is read).
"""
import sys, time
from pathlib import Path

import numpy as np, torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
OUT = REPO / "benchmarks" / ".work" / "probes"
OUT.mkdir(parents=True, exist_ok=True)
from datasets import load_dataset
from uge_hf.config import Recipe
from uge_hf.specs import build_model
from uge_hf.training import train_classifier, accuracy
torch.set_num_threads(2)
RECIPE = Recipe(epochs=15, batch_size=128)

def rows(start, stop):
    ds = load_dataset(str(REPO.parent / "shared" / "data" / "cifar10"))["train"].select(range(start, stop)).with_format("numpy")
    x = torch.from_numpy(np.stack(list(ds["img"]))).permute(0, 3, 1, 2).contiguous()
    return x, torch.as_tensor(ds["label"]).long()

def score(images, labels, val, specs, tag):
    out = {}
    for spec in specs:
        t = time.time()
        net = train_classifier(build_model(spec, 10), images, labels, RECIPE, description=spec)
        out[spec] = round(100 * accuracy(net.eval(), *val), 1)
        print(tag, spec, out[spec], f"{time.time()-t:.0f}s", flush=True)
    return out
