"""Shared by the probes in this folder: validation rows, the 15-epoch CPU recipe, train-and-score.

Probes are one-off experiments, not library code, kept as they ran so their recorded numbers can be reproduced.
After the runs, paths were made relative and the class patterns and `unit` moved here from the probes (the same
seeded draws, checked equal). Results: benchmarks/results/probes.md. Rows: train 0-4,999 protected, train
8,000-9,999 held out (the validation slice of issue 3; no test row is read).
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

def class_patterns() -> dict:
    """One random +-1 pattern per class (10 x 3 x 32 x 32): per pixel, and constant over 4x4 blocks. Seeded: every
    probe gets the same two."""
    g = torch.Generator().manual_seed(0)
    pixel = torch.randint(0, 2, (10, 3, 32, 32), generator=g).float() * 2 - 1
    block4 = torch.nn.functional.interpolate(torch.randint(0, 2, (10, 3, 8, 8), generator=g).float() * 2 - 1, scale_factor=4)
    return {"pixel": pixel, "block4": block4}

def unit(v):
    return v / v.norm().clamp_min(1e-12)

def score(images, labels, val, specs, tag):
    out = {}
    for spec in specs:
        t = time.time()
        net = train_classifier(build_model(spec, 10), images, labels, RECIPE, description=spec)
        out[spec] = round(100 * accuracy(net.eval(), *val), 1)
        print(tag, spec, out[spec], f"{time.time()-t:.0f}s", flush=True)
    return out
