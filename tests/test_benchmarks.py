"""The GPU benchmark's --smoke mode runs every phase end to end on the embedded sample."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_benchmark_smoke_mode(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "cifar10_gpu.py"), "--smoke",
         "--source", str(ROOT / "examples" / "cifar10-sample"), "--work-dir", str(tmp_path / "work"),
         "--results-dir", str(tmp_path / "results")],
        capture_output=True, text=True, timeout=600, env={"UGE_HF_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1",
                                                          "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    payload = json.loads((tmp_path / "results" / "cifar10_gpu_smoke.json").read_text())
    assert [r["network"] for r in payload["rows"]] == [
        "resnet18-w4-seed0", "lenet-w2-seed1", "resnet18-w4-seed1", "lenet-w2-seed1"]
    assert [r["scheme"] for r in payload["rows"]][-1] == "Distill"
    assert len(payload["noise_baseline_rows"]) == 2
    assert {"protect", "evaluate", "noise_baseline", "run"} <= set(payload["timings_s"])
    assert all(check["holds"] in (True, False, None) for check in payload["targets"])
    assert payload["networks_loaded_from_cache"] == 0  # a fresh work dir: every network trained by this run
    assert "## Targets" in (tmp_path / "results" / "cifar10_gpu_smoke.md").read_text()
