"""Probe A: does a class-wise pattern alone (no optimisation) make the data unlearnable under the recipe?

    python benchmarks/probes/class_shortcut.py
"""
import torch, torch.nn.functional as F
from common import *
x, y = rows(0, 5000); val = rows(8000, 10000)
g = torch.Generator().manual_seed(0)
for name, pattern in [
    ("pixel", torch.randint(0, 2, (10, 3, 32, 32), generator=g).float() * 2 - 1),
    ("block4", F.interpolate(torch.randint(0, 2, (10, 3, 8, 8), generator=g).float() * 2 - 1, scale_factor=4)),
]:
    for amp in (10, 5):
        xu = (x.int() + amp * pattern[y].int()).clamp(0, 255).to(torch.uint8)
        score(xu, y, val, ["cnn-w16-seed1", "resnet18-w16-seed0"], f"{name} amp{amp}")
