"""Probe A: does a class-wise pattern alone (no optimisation) make the data unlearnable under the recipe?

    python benchmarks/probes/class_shortcut.py
"""
import torch
from common import *
x, y = rows(0, 5000); val = rows(8000, 10000)
for name, pattern in class_patterns().items():
    for amp in (10, 5):
        xu = (x.int() + amp * pattern[y].int()).clamp(0, 255).to(torch.uint8)
        score(xu, y, val, ["cnn-w16-seed1", "resnet18-w16-seed0"], f"{name} amp{amp}")
