"""The GPU benchmark's --smoke mode runs every phase end to end on the embedded sample."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import load_dataset

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_benchmark_smoke_mode(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "cifar10_gpu.py"), "--smoke",
         "--source", str(ROOT / "examples" / "cifar10-sample"), "--work-dir", str(tmp_path / "work"),
         "--results-dir", str(tmp_path / "results")],
        capture_output=True, text=True, timeout=600, env={"UGE_HF_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1",
                                                          "PATH": "/usr/bin:/bin",
                                                          "PYTHONPATH": str(ROOT)},  # this checkout's uge_hf
    )
    assert done.returncode == 0, done.stderr[-3000:]
    payload = json.loads((tmp_path / "results" / "cifar10_gpu_smoke.json").read_text())
    assert [r["network"] for r in payload["rows"]] == [
        "resnet18-w4-seed0", "lenet-w2-seed1", "resnet18-w4-seed1", "lenet-w2-seed1"]
    assert [r["scheme"] for r in payload["rows"]][-1] == "Distill"
    assert len(payload["noise_baseline_rows"]) == 2
    assert {"protect", "evaluate", "noise_baseline", "run"} <= set(payload["timings_s"])
    authorized = payload["rows"][0]
    (check,) = [c for c in payload["targets"] if c["target"].startswith("authorized")]
    assert check["holds"] == (authorized["protected"] >= authorized["clean"] - 0.03)  # computed from the rows
    assert payload["networks_loaded_from_cache"] == 0  # a fresh work dir: every network trained by this run
    assert "## Targets" in (tmp_path / "results" / "cifar10_gpu_smoke.md").read_text()


def _benchmark_module(name: str):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return __import__(name)
    finally:
        sys.path.pop(0)


def test_ablations_turn_off_the_papers_loss_terms():
    from uge_hf.config import ProtectConfig

    cpu = _benchmark_module("cifar10_cpu")
    summary = _benchmark_module("summary")
    expected = {None: "gm + fd + 0.5 ud", "unlearn": "fd", "undistill": "0.5 ud", "without-ud": "gm + fd"}
    for ablation, terms in expected.items():
        protocol = cpu.cpu_protocol("unused", "per-sample", ["cnn-w16-seed1"], ablation)
        assert summary.loss_terms(protocol.protect) == terms
        ProtectConfig(**protocol.protect)  # a valid config
    assert cpu.cpu_protocol("unused", "generator", [], None).name == "cifar10_cpu"
    assert cpu.cpu_protocol("unused", "per-sample", [], "without-ud").name == "cifar10_cpu_per_sample_without_ud"
    replay = cpu.cpu_protocol("unused", "replay", [], None)
    assert replay.name == "cifar10_cpu_replay" and summary.loss_terms(replay.protect) == "10 gm + fd + 0.5 ud"


def test_summary_has_a_row_per_variant_and_blanks_for_untrained_networks():
    summary = _benchmark_module("summary")

    def payload(protect: dict, rows: list[tuple[str, str, str, float, float]]) -> dict:
        return {
            "protocol": {"protect": {"authorized": ["resnet18-w4-seed0"], **protect}},
            "rows": [dict(network=n, role=r, scheme=s, clean=c, protected=p) for n, r, s, c, p in rows],
            "noise_baseline_rows": [dict(network="resnet18-w4-seed0", role="authorized", scheme="Normal", clean=0.7, protected=0.69)],
            "timings_s": {"protect": 120.0},
        }

    full = payload({}, [("resnet18-w4-seed0", "authorized", "Normal", 0.7, 0.68), ("cnn-seed1", "hacker", "Normal", 0.6, 0.3),
                        ("cnn-seed1", "hacker", "Distill", 0.65, 0.4)])
    unlearn = payload({"lambda_gm": 0, "lambda_ud": 0}, [("resnet18-w4-seed0", "authorized", "Normal", 0.7, 0.5)])
    keyed = payload({"method": "keyed"}, [("resnet18-w4-seed0", "authorized", "Normal", 0.69, 0.69),
                                          ("cnn-seed1", "hacker", "Normal", 0.6, 0.1)])
    keyed["noise_baseline_rows"] = []  # the keyed protocol runs no noise baseline: the row comes from another variant
    lines = summary.summary({"cifar10_cpu_unlearn": unlearn, "cifar10_cpu": full, "cifar10_cpu_keyed": keyed}).splitlines()
    assert lines[0].split(" | ")[4:8] == ["resnet18-w4-seed0 (authorized)", "cnn-seed1", "cnn-seed1 Distill",
                                          "resnet18-w4-seed0 behind its key (authorized)"]
    assert lines[2] == "| Original | - | - | - | 70.0 | 60.0 | 65.0 | 69.0 | - | |"
    assert lines[3] == "| uniform noise, same rho | - | - | - | 69.0 |  |  |  | - | |"
    assert lines[4] == "| UGE | gradient-matching | generator | gm + fd + 0.5 ud | 68.0 | 30.0 | 40.0 |  | 2.0 | `cifar10_cpu` |"
    assert lines[5] == "| Unlearn | gradient-matching | generator | fd | 50.0 |  |  |  | 2.0 | `cifar10_cpu_unlearn` |"
    assert lines[6] == ("| Keyed | keyed | tile 8, grain 4, 12 groups, signs image, pull 0 | - |  | 10.0 |  | 69.0 | 2.0 |"
                        " `cifar10_cpu_keyed` |")


def test_validation_rows_come_from_after_the_protected_train_rows_never_from_test():
    protocol = _benchmark_module("protocol")
    sample = str(ROOT / "examples" / "cifar10-sample")
    settings = dict(name="v", source=sample, train_rows=100, test_rows=50, protect={}, hackers=[], distill_students=[])
    rows = protocol.load_rows(protocol.Protocol(**settings, validation_start=300))
    train = load_dataset(sample, split="train")
    assert rows["train"]["img"] == train.select(range(100))["img"]
    assert rows["test"]["img"] == train.select(range(300, 350))["img"]
    with pytest.raises(ValueError, match="inside the 100 protected rows"):
        protocol.load_rows(protocol.Protocol(**settings, validation_start=60))
    cpu = _benchmark_module("cifar10_cpu").cpu_protocol("unused", "replay", [], None, validation=True)
    assert (cpu.name, cpu.train_rows, cpu.validation_start) == ("cifar10_val_replay", 5_000, 8_000)


def test_targets_are_the_protocols_data():
    protocol = _benchmark_module("protocol")
    from uge_hf.evaluate import Row

    settings = dict(name="t", source="unused", train_rows=1, test_rows=1, protect={}, hackers=[], distill_students=[])
    plain = protocol.release_evaluation(protocol.Protocol(**settings))
    assert (plain.attacks, plain.attack_hackers) == ([], None)
    attacked = protocol.release_evaluation(protocol.Protocol(
        **settings, attacks=["linear-projection", "grayscale"], attack_hackers=["cnn-seed1"]))
    assert (attacked.attacks, attacked.attack_hackers) == (["linear-projection", "grayscale"], ["cnn-seed1"])
    rows = [
        Row("resnet18-w4-seed0", "authorized", "Normal", 0.70, 0.66, 0.71, 0.67),
        Row("cnn-seed1", "hacker", "Normal", 0.60, 0.15, 0.62, 0.40),
        Row("resnet18-w4-seed0", "hacker", "Wrong key", 0.60, 0.30),  # cached without per-epoch accuracies
        Row("cnn-seed1", "hacker", "Distill", 0.60, 0.40),
        Row("cnn-seed1", "hacker", "linear-projection", 0.50, 0.25),
        Row("cnn-seed1", "hacker", "jpeg10", 0.50, 0.40),
    ]

    def holds(proto):
        checks = protocol.check_targets(rows, [], proto, {}, 0)
        return [(c["target"].split(":")[0], c["holds"]) for c in checks]

    # The existing protocol's targets: authorized within 3 points, Normal 0.6, Distill 0.7; nothing else checked.
    assert holds(protocol.Protocol(**settings)) == [
        ("authorized resnet18-w4-seed0", False), ("hacker cnn-seed1 Normal", True), ("hacker cnn-seed1 Distill", True)]
    strict = protocol.Protocol(**settings, authorized_margin_points=5, ratio_targets={
        "Normal": 0.3, "Wrong key": 0.35, "Distill": 0.35, "Peak epoch": 0.6, "linear-projection": 0.6})
    assert holds(strict) == [
        ("authorized resnet18-w4-seed0", True),
        ("hacker cnn-seed1 Normal", True), ("hacker cnn-seed1 Normal, peak epoch", False),  # 0.40 > 0.6 x 0.62
        ("hacker resnet18-w4-seed0 Wrong key", False), ("hacker resnet18-w4-seed0 Wrong key, peak epoch", None),
        ("hacker cnn-seed1 Distill", False), ("hacker cnn-seed1 Linear proj.", True)]


@pytest.mark.slow
def test_scale_benchmark_smoke(tmp_path):
    """benchmarks/scale.py end to end on tiny synthetic sets, shard by shard, 1 and 2 processes: time, peak RSS per
    process, RSS per finished shard, and the two releases compared byte for byte."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "scale.py"), "--rows", "24", "--size", "16", "--shard-rows", "8",
         "--processes", "1", "2", "--work-dir", str(tmp_path / "work"), "--results-dir", str(tmp_path / "results")],
        capture_output=True, text=True, timeout=600, env={"UGE_HF_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1",
                                                          "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1",
                                                          "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    payload = json.loads((tmp_path / "results" / "scale_keyed_16px_shards8.json").read_text())
    one, two = payload["runs"]
    assert (one["rows"], one["processes"], two["processes"]) == (24, 1, 2) and one["img_per_s"] > 0
    assert [rank["rank"] for rank in two["ranks"]] == [0, 1]
    assert one["ranks"][0]["peak_rss_mib"] > one["ranks"][0]["rss_before_protect_mib"] > 0
    shards = [sample["shards_done"] for sample in one["per_shard"]]  # sampled every 0.1 s as shards finish
    assert shards == sorted(set(shards)) and 1 <= shards[-1] <= 3  # 24 rows / 8 per shard
    assert payload["comparisons"] == [{"dataset": "24-16", "processes": [1, 2], "release_bytes_identical": True}]
    assert "scale.py --rows 24" in payload["command"]
    assert {"rss_mib", "anonymous_mib", "file_mib"} <= set(one["per_shard"][0])
