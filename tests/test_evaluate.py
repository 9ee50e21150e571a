"""uge-hf evaluate on a tiny release: rows, caching/resume, attacks, peak epochs, input stages, the card, the CLI."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil

import pytest
import torch
from datasets import DatasetDict
from huggingface_hub import DatasetCard
from typer.testing import CliRunner

from uge_hf import attacks
from uge_hf import evaluate as ev
from uge_hf.cli import app
from uge_hf.errors import UgeError
from uge_hf.specs import build_model
from uge_hf.training import accuracy

from .conftest import make_image_dataset

QUICK = dict(hackers=["lenet-w2-seed5", "resnet18-w4-seed1"], epochs=1)


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny_release):
    """root/clean: the shared tiny release's source as a plain parquet folder (as a user would have it);
    root/release: a copy of the release (some tests write its card)."""
    root = tmp_path_factory.mktemp("eval")
    source = DatasetDict(train=make_image_dataset(32, seed=0), test=make_image_dataset(12, seed=1))
    for split in source:
        source[split].to_parquet(str(root / "clean" / "data" / f"{split}-00000-of-00001.parquet"))
    shutil.copytree(tiny_release, root / "release")
    return root


class Counting(torch.nn.Module):
    """An input stage that passes images through and counts them."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner, self.seen = inner, 0

    def forward(self, images):
        self.seen += len(images)
        return self.inner(images)


def test_rows_cover_authorized_hackers_distill_and_attacks(made, tmp_path, monkeypatch):
    stages = []

    def counted_projection(*args, **kwargs):
        stages.append(Counting(attacks.linear_projection_stage(*args, **kwargs)))
        return stages[-1]

    monkeypatch.setattr(ev, "linear_projection_stage", counted_projection)
    config = ev.EvaluateConfig(**QUICK, attacks=["jpeg10", "grayscale", "linear-projection"])
    rows = ev.evaluate(made / "release", str(made / "clean"), config, cache_dir=tmp_path / "cache")
    assert [(r.network, r.scheme) for r in rows] == [
        ("resnet18-w4-seed0", "Normal"), ("lenet-w2-seed5", "Normal"), ("resnet18-w4-seed1", "Normal"),
        ("lenet-w2-seed5", "Distill"), ("lenet-w2-seed5", "jpeg10"), ("lenet-w2-seed5", "grayscale"),
        ("lenet-w2-seed5", "linear-projection"),
    ]
    assert rows[0].role == "authorized" and all(r.role == "hacker" for r in rows[1:])
    for row in rows:
        assert 0 <= row.clean <= 1 and 0 <= row.protected <= 1
    # One projection per variant (clean, protected), each seen by the 32 training images (1 epoch) and 12 test images.
    assert [stage.seen for stage in stages] == [32 + 12, 32 + 12]
    # Peak epochs: recorded for Normal training only (1 epoch here: the peak is the final accuracy).
    for row in rows:
        normal = row.scheme == "Normal"
        assert (row.peak_clean, row.peak_protected) == ((row.clean, row.protected) if normal else (None, None))
    table = ev.markdown_table(rows)
    assert "| Linear proj. |" in table and table.splitlines()[0].endswith("| peak clean | peak protected |")
    assert table.splitlines()[-1].endswith("| - | - |")
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
    assert calls == [] and again == rows  # peaks included: the cached networks' epoch curves came back too


def test_linear_projection_removes_the_fitted_directions():
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 4, 4), dtype=torch.uint8, generator=generator)
    basis = attacks.orthonormal_rows(torch.randn(3, 48, generator=generator))
    assert torch.allclose(basis @ basis.T, torch.eye(3), atol=1e-5)
    mean = attacks.mean_image(images)
    stage = attacks.LinearProjection(basis, mean)
    x = images.float() / 255
    projected = stage(x)
    assert projected.shape == x.shape and not torch.allclose(projected, x, atol=1e-3)
    assert (basis @ (projected.reshape(6, -1) - mean).T).abs().max() < 1e-5  # nothing left along Q
    moved = (projected - x).reshape(6, -1)
    assert (moved - moved @ basis.T @ basis).abs().max() < 1e-5  # only along Q: the rest is untouched


def test_linear_projection_finds_a_planted_classwise_shortcut():
    """A class-wise +-8-level pattern (a linear shortcut) lies mostly in the span of the fitted directions."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(256) % 4
    base = torch.randint(64, 192, (256, 3, 8, 8), generator=generator)
    patterns = torch.randint(0, 2, (4, 3, 8, 8), generator=generator) * 16 - 8
    discriminative = (patterns - patterns.float().mean(0)).reshape(4, -1)  # what tells the classes apart

    def captured(images):
        stage = attacks.linear_projection_stage(images.clamp(0, 255).to(torch.uint8), labels, 4)
        return ((discriminative @ stage.basis.T).norm(dim=1) / discriminative.norm(dim=1)).min().item()

    assert captured(base + patterns[labels]) > 0.7
    assert captured(base) < 0.3  # without the shortcut, the directions are unrelated to the patterns


def test_peak_epoch_is_recorded_without_changing_training(made, tmp_path):
    data = ev.load_evaluation_data(made / "release", str(made / "clean"), ev.EvaluateConfig(epochs=2))
    test = (data.test.images, data.test.labels)
    runs = []
    for folder, record_on in (("plain", None), ("recorded", test)):
        trainer = ev.Trainer(tmp_path / folder)
        model, key = trainer.train(build_model("cnn-w4-seed1", 4), "x", data.protected.images, data.clean.labels,
                                   data.recipe, record_on=record_on)
        runs.append((key, model.state_dict(), trainer.epoch_accuracies(key, *test), accuracy(model, *test)))
    (key, plain, nothing, _), (same_key, recorded, curve, final) = runs
    assert key == same_key and nothing is None
    assert all(torch.equal(plain[name], recorded[name]) for name in plain)  # batch norm kept training between epochs
    assert len(curve) == 2 and curve[-1] == final
    assert trainer.epoch_accuracies(key, data.test.images[:6], data.test.labels[:6]) is None  # other rows: not recorded


class HalfMask(torch.nn.Module):
    """Zeroes the left half of [0, 1] images: exact on uint8 pixels, and not the same after a crop or a flip."""

    def forward(self, images):
        return torch.cat([torch.zeros_like(images[..., : images.shape[-1] // 2]), images[..., images.shape[-1] // 2:]], -1)


def _masked(tensors):
    images = tensors.images.clone()
    images[..., : images.shape[-1] // 2] = 0
    return dataclasses.replace(tensors, images=images)


def test_input_stages_run_before_augmentation_in_training_and_at_test_time(made, tmp_path, monkeypatch):
    config = ev.EvaluateConfig(hackers=["lenet-w2-seed5"], epochs=1)
    data = ev.load_evaluation_data(made / "release", str(made / "clean"), config)
    authorized = data.authorized[0].spec
    assert data.recipe.augmentation == "crop+flip"
    calls = []
    original = ev.train_classifier
    monkeypatch.setattr(ev, "train_classifier", lambda *a, **k: calls.append(k) or original(*a, **k))

    def lenet():
        return build_model("lenet-w2-seed6", 4)

    # A keyed authorized network and a "wrong key" network, behind a stage, on the raw images ...
    staged = dataclasses.replace(data, input_stages={authorized: HalfMask()},
                                 extra_networks=[("Wrong key", "lenet-w2-seed6", lenet, HalfMask())])
    rows = ev.run_protocol(staged, config, ev.Trainer(tmp_path / "staged"))
    # ... train exactly as the same networks without a stage on images masked beforehand (train and test rows).
    masked = dataclasses.replace(data, clean=_masked(data.clean), protected=_masked(data.protected), test=_masked(data.test),
                                 extra_networks=[("Wrong key", "lenet-w2-seed6", lenet, None)])
    reference = ev.run_protocol(masked, dataclasses.replace(config, distill=False), ev.Trainer(tmp_path / "masked"))
    assert [(r.network, r.role, r.scheme) for r in rows] == [
        (authorized, "authorized", "Normal"), ("lenet-w2-seed5", "hacker", "Normal"),
        ("lenet-w2-seed6", "hacker", "Wrong key"), ("lenet-w2-seed5", "hacker", "Distill")]
    assert rows[0] == reference[0] and rows[2] == reference[2]

    def weights(folder):
        return {hashlib.sha256(path.read_bytes()).hexdigest() for path in (tmp_path / folder).glob("*.safetensors")}

    assert len(weights("staged") & weights("masked")) == 4  # authorized and wrong key, clean and protected: same weights
    # The Distill student sees the raw images; its teacher, the authorized network, sees them through its stage.
    distill = [k for k in calls if k["description"].startswith("distill")]
    assert len(distill) == 2 and all(k["input_stage"] is None and isinstance(k["teacher_stage"], HalfMask) for k in distill)

    # The peak is the best epoch of the recorded curve, which the cache gives back without training.
    trainer, before = ev.Trainer(tmp_path / "staged"), len(calls)
    _, key = trainer.train(build_model("lenet-w2-seed5", 4), "again", data.protected.images, data.clean.labels,
                           data.recipe, record_on=(data.test.images, data.test.labels))
    curve = trainer.epoch_accuracies(key, data.test.images, data.test.labels)
    assert len(calls) == before and len(curve) == 1
    assert rows[1].peak_protected == max(curve) >= rows[1].protected == curve[-1]
    # Tiny nets barely move from chance, so plant a curve that rises and falls: a rerun reports its best epoch.
    sidecar = tmp_path / "staged" / f"{key}.epochs.json"
    sidecar.write_text(json.dumps({rows_key: [0.1, 0.9, 0.3] for rows_key in json.loads(sidecar.read_text())}))
    again = ev.run_protocol(staged, config, ev.Trainer(tmp_path / "staged"))
    assert len(calls) == before and again[1] == dataclasses.replace(rows[1], peak_protected=0.9)


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
    data = ev.load_evaluation_data(made / "release", str(made / "clean"), ev.EvaluateConfig(**QUICK))
    with pytest.raises(UgeError, match="does not authorize"):
        dataclasses.replace(data, input_stages={"cnn-seed9": HalfMask()})


def test_cli_writes_results_and_updates_the_card(made, tmp_path):
    release = tmp_path / "release"
    import shutil

    shutil.copytree(made / "release", release)
    result = CliRunner().invoke(app, [
        "evaluate", str(release), "--clean", str(made / "clean"), "--hacker", "lenet-w2-seed5", "--no-distill",
        "--attack", "linear-projection", "--no-peak-epoch",
        "--epochs", "1", "--output", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), "--update-card"])
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [(r["network"], r["scheme"]) for r in results["rows"]] == [
        ("resnet18-w4-seed0", "Normal"), ("lenet-w2-seed5", "Normal"), ("lenet-w2-seed5", "linear-projection")]
    assert all(r["peak_clean"] is None and r["peak_protected"] is None for r in results["rows"])  # --no-peak-epoch
    assert (tmp_path / "out" / "results.png").stat().st_size > 0
    markdown = (tmp_path / "out" / "results.md").read_text()
    assert "| `lenet-w2-seed5` | hacker | Normal |" in markdown and "| `lenet-w2-seed5` | hacker | Linear proj. |" in markdown
    assert "peak" not in markdown
    card = DatasetCard.load(release / "README.md")
    assert [r["network"] for r in card.data.uge["evaluation"]["rows"]] == ["resnet18-w4-seed0", "lenet-w2-seed5", "lenet-w2-seed5"]
    assert card.data.uge["authorized"][0]["spec"] == "resnet18-w4-seed0"  # the rest of the block is kept
    assert card.text.count("## Evaluation") == 1
    assert "linear-projection" in CliRunner().invoke(app, ["evaluate", "--help"]).output
