"""Probe D, the control of probe B at --budget 3: the same 10-level class-wise block pattern, each pixel's
magnitude lowered by a random 0-3 levels instead of an L_gm-optimised correction. If this rescues learning as
much as probe B did, the correction's effect is not specific to the authorized network's gradients.

    python benchmarks/probes/random_compensation.py
"""
import json, torch
from common import *
x, y = rows(0, 5000); val = rows(8000, 10000)
block4 = class_patterns()["block4"]
lowered = torch.randint(0, 4, x.shape, generator=torch.Generator().manual_seed(1))
xu = (x.int() + block4[y].int() * (10 - lowered)).clamp(0, 255).to(torch.uint8)
assert (xu.int() - x.int()).abs().max() <= 10
print(json.dumps(score(xu, y, val, ["resnet18-w16-seed0", "resnet18-w16-seed1", "cnn-w16-seed1"], "D")))
