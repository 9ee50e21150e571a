"""Train more networks on a probe's saved x_u (benchmarks/.work/probes/*.pt), e.g. the contrast network's own init.

    python benchmarks/probes/score_saved.py xu_block4_10_3_1_1_resnet18-w16-seed100.pt resnet18-w16-seed100
"""
import json, sys
from common import *
x, y = rows(0, 5000); val = rows(8000, 10000)
xu = torch.load(OUT / sys.argv[1])
assert xu.shape == x.shape and (xu.int() - x.int()).abs().max() <= 10
print(json.dumps(score(xu, y, val, sys.argv[2:], sys.argv[1])))
