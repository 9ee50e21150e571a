"""The probes' reference: the same three networks trained on the clean validation rows.

    python benchmarks/probes/clean_reference.py
"""
import json
from common import *
x, y = rows(0, 5000); val = rows(8000, 10000)
print(json.dumps(score(x, y, val, ["resnet18-w16-seed0", "resnet18-w16-seed1", "cnn-w16-seed1"], "clean")))
