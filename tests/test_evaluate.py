"""uge-hf evaluate on a tiny release: rows, caching/resume, attacks, the card update, the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from datasets import DatasetDict
from huggingface_hub import DatasetCard
from typer.testing import CliRunner

import uge_hf
from uge_hf import evaluate as ev
from uge_hf.cli import app
from uge_hf.errors import UgeError

from .conftest import TINY_OPTIONS, make_image_dataset

QUICK = dict(hackers=["lenet-w2-seed5", "resnet18-w4-seed1"], epochs=1)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    source = DatasetDict(train=make_image_dataset(32, seed=0), test=make_image_dataset(12, seed=1))
    for split in source:  # a plain parquet folder, as a user would have it
        source[split].to_parquet(str(root / "clean" / "data" / f"{split}-00000-of-00001.parquet"))
    uge_hf.protect(source, output_dir=root / "release", **TINY_OPTIONS)
    return root


def test_rows_cover_authorized_hackers_distill_and_attacks(made, tmp_path):
    config = ev.EvaluateConfig(**QUICK, attacks=["jpeg10", "grayscale"])
    rows = ev.evaluate(made / "release", str(made / "clean"), config, cache_dir=tmp_path / "cache")
    assert [(r.network, r.scheme) for r in rows] == [
        ("resnet18-w4-seed0", "Normal"), ("lenet-w2-seed5", "Normal"), ("resnet18-w4-seed1", "Normal"),
        ("lenet-w2-seed5", "Distill"), ("lenet-w2-seed5", "jpeg10"), ("lenet-w2-seed5", "grayscale"),
    ]
    assert rows[0].role == "authorized" and all(r.role == "hacker" for r in rows[1:])
    for row in rows:
        assert 0 <= row.clean <= 1 and 0 <= row.protected <= 1
    cached = sorted((tmp_path / "cache").glob("*.safetensors"))
    assert len(cached) == 2 * len(rows)

    # A second run trains nothing: every network comes from the cache, with the same numbers.
    calls = []
    original = ev.train_classifier
    ev.train_classifier = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        again = ev.evaluate(made / "release", str(made / "clean"), config, cache_dir=tmp_path / "cache")
    finally:
        ev.train_classifier = original
    assert calls == [] and again == rows


def test_default_hackers_follow_the_paper_and_add_the_same_architecture():
    assert ev.default_hackers("resnet18-w16-seed0") == [
        "cnn-seed1", "lenet-seed1", "mobilenetv2-seed1", "shufflenetv2-seed1", "resnet18-w16-seed1"]
    assert ev.default_hackers("cnn-seed3")[-1] == "cnn-seed4" and "cnn-seed4" not in ev.default_hackers("cnn-seed3")[:-1]


def test_attacks_transform_images():
    images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    gray = ev.grayscale(images)
    assert torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 1], gray[:, 2])
    compressed = ev.jpeg(images)
    assert compressed.shape == images.shape and compressed.dtype == torch.uint8
    assert not torch.equal(compressed, images)


def test_wrong_clean_dataset_and_bad_attack_are_user_errors(made, tmp_path):
    other = DatasetDict(train=make_image_dataset(20, seed=3), test=make_image_dataset(4, seed=4))
    with pytest.raises(UgeError, match="rows"):
        ev.evaluate(made / "release", other, ev.EvaluateConfig(**QUICK), cache_dir=tmp_path)
    with pytest.raises(UgeError, match="unknown attack"):
        ev.EvaluateConfig(attacks=["blur"])


def test_cli_writes_results_and_updates_the_card(made, tmp_path):
    release = tmp_path / "release"
    import shutil

    shutil.copytree(made / "release", release)
    result = CliRunner().invoke(app, [
        "evaluate", str(release), "--clean", str(made / "clean"), "--hacker", "lenet-w2-seed5", "--no-distill",
        "--epochs", "1", "--output", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), "--update-card"])
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["network"] for r in results["rows"]] == ["resnet18-w4-seed0", "lenet-w2-seed5"]
    assert (tmp_path / "out" / "results.png").stat().st_size > 0
    assert "| `lenet-w2-seed5` | hacker | Normal |" in (tmp_path / "out" / "results.md").read_text()
    card = DatasetCard.load(release / "README.md")
    assert [r["network"] for r in card.data.uge["evaluation"]["rows"]] == ["resnet18-w4-seed0", "lenet-w2-seed5"]
    assert card.data.uge["authorized"][0]["spec"] == "resnet18-w4-seed0"  # the rest of the block is kept
    assert card.text.count("## Evaluation") == 1
