"""End to end: protect() on a tiny dataset -> release folder -> load_dataset, bound, card, determinism, resume."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import load_dataset
from huggingface_hub import DatasetCard

import uge_hf
from uge_hf.card import read_card
from uge_hf import apply, solver
from uge_hf.errors import UgeError
from uge_hf.layout import load_release
from uge_hf.specs import init_sha256

from .conftest import TINY_OPTIONS


def release_bytes(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    from .conftest import make_image_dataset
    from datasets import DatasetDict

    source = DatasetDict(train=make_image_dataset(32, seed=0), test=make_image_dataset(12, seed=1))
    output = tmp_path_factory.mktemp("run") / "release"
    returned = uge_hf.protect(source, output_dir=output, **TINY_OPTIONS)
    return source, output, returned


def test_release_loads_with_same_rows_labels_and_columns(release):
    source, output, returned = release
    loaded = load_dataset(str(output))
    assert set(loaded) == {"train", "test"}
    for split in ("train", "test"):
        assert loaded[split].num_rows == source[split].num_rows
        assert loaded[split]["category"] == source[split]["category"]
        assert loaded[split]["caption"] == source[split]["caption"]
        assert loaded[split].features["category"].names == source[split].features["category"].names
    assert returned.dataset["train"]["category"] == source["train"]["category"]
    assert returned.release_dir == output.resolve() and returned.private_dir is None  # public weights: nothing private
    assert returned.card == read_card(output)  # the block as written, typed
    with pytest.warns(DeprecationWarning, match=r"result\.dataset\[split\]"):
        assert returned["test"]["caption"] == source["test"]["caption"]  # the pre-0.2 return value, still readable


def test_every_protected_pixel_within_bound_and_test_split_unchanged(release):
    source, output, _ = release
    loaded = load_dataset(str(output))
    bound = int(np.floor(0.04 * 255))
    changed = 0
    for clean, protected in zip(source["train"]["picture"], loaded["train"]["picture"]):
        a = np.asarray(clean.convert("RGB"), dtype=np.int16)
        b = np.asarray(protected, dtype=np.int16)
        assert protected.mode == "RGB" and a.shape == b.shape
        assert np.abs(a - b).max() <= bound
        changed += int((a != b).any())
    assert changed == source["train"].num_rows  # the generator did perturb every image
    for clean, kept in zip(source["test"]["picture"], loaded["test"]["picture"]):
        assert np.array_equal(np.asarray(clean), np.asarray(kept))


def test_card_records_the_authorized_init_and_its_hash(release):
    _, output, _ = release
    uge = DatasetCard.load(output / "README.md").data.to_dict()["uge"]
    (net,) = uge["authorized"]
    weights = (output / net["weights"]).read_bytes()
    assert net["init_sha256"] == hashlib.sha256(weights).hexdigest() == init_sha256("resnet18-w4-seed0", 4)
    assert uge["rho"] == 0.04 and uge["pixel_bound"] == 10
    assert uge["recipe"]["epochs"] == 2 and uge["encoder"]["name"] == "surrogate"
    assert uge["results"]["perturbation"]["train"]["linf_levels"] <= 10
    assert set(uge["results"]["losses"]) == {"generator_last_epoch"}
    assert set(uge["results"]["losses"]["generator_last_epoch"]) == {"loss", "gm", "fd", "ud"}
    config = json.loads((output / "uge_config.json").read_text())
    assert uge_hf.ProtectConfig.from_dict(config).authorized == ["resnet18-w4-seed0"]
    assert not (output / "generator.safetensors").exists()
    assert (output / "preview.png").is_file()
    assert not (output.parent / "release.uge-work").exists()


def test_same_seed_gives_identical_release_bytes(release, tmp_path):
    source, first, _ = release
    second = tmp_path / "again"
    uge_hf.protect(source, output_dir=second, **TINY_OPTIONS)
    assert release_bytes(first) == release_bytes(second)


def test_killed_run_resumes_and_matches_an_uninterrupted_one(release, tmp_path, monkeypatch):
    source, uninterrupted, _ = release
    output = tmp_path / "resumed"
    real_loss, calls = solver.uge_loss, []

    def crash_after_five_steps(*args, **kwargs):
        calls.append(1)
        if len(calls) > 5:
            raise KeyboardInterrupt("simulated kill")
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(solver, "uge_loss", crash_after_five_steps)
    with pytest.raises(KeyboardInterrupt, match="simulated kill"):
        uge_hf.protect(source, output_dir=output, **TINY_OPTIONS)
    assert not output.exists()  # nothing half-released
    work = tmp_path / "resumed.uge-work"
    assert (work / "generator" / "step-3" / "step.json").exists()

    resumed_steps = []
    monkeypatch.setattr(solver, "uge_loss", lambda *a, **k: (resumed_steps.append(a[-1]), real_loss(*a, **k))[1])
    uge_hf.protect(source, output_dir=output, **TINY_OPTIONS)
    assert resumed_steps[0] == 3  # started from the checkpoint, not from scratch
    assert release_bytes(output) == release_bytes(uninterrupted)


def test_refuses_a_non_empty_output_before_any_work(tiny_dataset, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    with pytest.raises(UgeError, match="not empty"):
        uge_hf.protect(tiny_dataset, output_dir=tmp_path / "taken", **TINY_OPTIONS)
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"


def test_unknown_split_and_bad_rho_are_user_errors(tiny_dataset, tmp_path):
    with pytest.raises(UgeError, match="no split named validation"):
        uge_hf.protect(tiny_dataset, output_dir=tmp_path / "x", splits=["validation"], **TINY_OPTIONS)
    with pytest.raises(UgeError, match="rho"):
        uge_hf.protect(tiny_dataset, output_dir=tmp_path / "x", rho=1.5, **TINY_OPTIONS)
    with pytest.raises(UgeError, match="every loss weight is 0"):
        uge_hf.protect(tiny_dataset, output_dir=tmp_path / "x", **{**TINY_OPTIONS, "lambda_gm": 0, "lambda_fd": 0, "lambda_ud": 0})


def test_clip_encoder_two_authorized_nets_and_released_generator(tiny_dataset, tmp_path):
    from .tiny_clip import make_tiny_clip

    clip = make_tiny_clip(tmp_path / "clip")
    options = {**TINY_OPTIONS, "authorized": ["resnet18-w4-seed0", "lenet-w2-seed3"], "encoder": str(clip),
               "release_generator": True, "generator_epochs": 1}
    output = tmp_path / "release"
    uge_hf.protect(tiny_dataset, output_dir=output, **options)
    uge = DatasetCard.load(output / "README.md").data.to_dict()["uge"]
    assert [n["spec"] for n in uge["authorized"]] == ["resnet18-w4-seed0", "lenet-w2-seed3"]
    # A local encoder folder is recorded by its name: its absolute path is machine-local (issue 12).
    assert uge["encoder"]["name"] == uge["config"]["encoder"] == "clip"
    assert json.loads((output / "uge_config.json").read_text())["encoder"] == "clip"
    assert str(tmp_path) not in (output / "README.md").read_text()
    for net in uge["authorized"]:
        assert hashlib.sha256((output / net["weights"]).read_bytes()).hexdigest() == net["init_sha256"]
    assert (output / "generator.safetensors").is_file()


def test_perturb_respects_rho_and_pixel_range():
    generator = solver.build_generator(uge_hf.ProtectConfig(rho=0.04, generator_channels=4, generator_blocks=1))
    with torch.no_grad():
        x = torch.rand(4, 3, 16, 16)
        x_u = solver.perturb(generator, x, 0.04)
    assert (x_u - x).abs().max() <= 0.04 + 1e-6
    assert x_u.min() >= 0 and x_u.max() <= 1


@pytest.mark.parametrize("solver", ["per-sample", "hybrid", "replay"])
def test_direct_solvers_release_within_bound(tiny_dataset, tmp_path, solver):
    output = tmp_path / solver
    uge_hf.protect(tiny_dataset, output_dir=output, solver=solver, per_sample_steps=2, **TINY_OPTIONS)
    loaded = load_dataset("parquet", data_files=str(output / "data" / "train-*.parquet"), split="train")
    for clean, protected in zip(tiny_dataset["train"]["picture"], loaded["picture"]):
        diff = np.abs(np.asarray(clean, dtype=np.int16) - np.asarray(protected, dtype=np.int16))
        assert 0 < diff.max() <= 10
    card = DatasetCard.load(output / "README.md")
    uge = card.data.to_dict()["uge"]
    assert uge["config"]["solver"] == solver
    stages = {"per-sample": ["per_sample_first_step", "per_sample_last_step"],
              "hybrid": ["generator_last_epoch", "per_sample_first_step", "per_sample_last_step"],
              "replay": ["replay_first_epoch", "replay_last_epoch"]}[solver]
    assert list(uge["results"]["losses"]) == stages
    assert set(uge["results"]["losses"][stages[-1]]) == {"loss", "gm", "fd", "ud"}
    label = {"replay": "replay solver, last recipe epoch (mean over its steps)"}.get(solver, "per-sample solver, last step (mean over batches)")
    assert f"{label}: loss" in card.text


def _tiny_context(tiny_dataset, **overrides):
    """The StepContext of a tiny protection run (surrogate encoder, resnet18-w4 trajectory), built directly."""
    from uge_hf.config import ProtectConfig
    from uge_hf.data import to_tensors
    from uge_hf.encoders import SurrogateEncoder
    from uge_hf.trajectory import compute_trajectory

    config = ProtectConfig(**{**TINY_OPTIONS, **overrides})
    data = to_tensors(tiny_dataset["train"], "picture", "category", (16, 16))
    backbone = uge_hf.build_model("cnn-w4-seed0", 4)
    encoder = SurrogateEncoder.fit(backbone, data.images, data.labels, torch.full((3,), 0.5), torch.full((3,), 0.25))
    features = solver.FeatureTargets.compute(encoder, data.images, data.labels, data.class_names, "cpu")
    trajectory = compute_trajectory(config.authorized[0], data.images, data.labels, 4, config.recipe)
    return solver.build_step_context(config, [trajectory], encoder, features, 4, torch.device("cpu")), data


def test_replay_solver_reruns_the_recipe_exactly_and_resumes(tiny_dataset, tmp_path, monkeypatch):
    """The replay's own training is the authorized recipe step for step (else L_gm is matched at the wrong states),
    L_gm is matched on the real batch (0 before x_u moves), and a run killed mid-way resumes to the same x_u."""
    from accelerate import Accelerator

    ctx, data = _tiny_context(tiny_dataset, solver="replay")
    replayed, losses = solver.refine_along_replay(Accelerator(), ctx, data.images, data.labels, tmp_path / "full")
    saved = torch.load(tmp_path / "full" / "replay.pt", weights_only=True)
    for name, tensor in ctx.trajectories[0].final.items():
        assert torch.equal(saved["nets"][0]["net"][name], tensor), name
    assert losses["first"]["gm"] < 1e-3 < losses["last"]["gm"]  # the first step sees x_u == x, later ones do not
    assert losses["last"]["fd"] < losses["first"]["fd"]
    assert 0 < (replayed - data.images.float() / 255).abs().max() <= ctx.config.rho + 1e-6

    real_loss, calls = solver.uge_loss, []

    def crash_in_second_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) > 5:  # 4 batches per epoch: dies in the second
            raise KeyboardInterrupt("simulated kill")
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(solver, "uge_loss", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt, match="simulated kill"):
        solver.refine_along_replay(Accelerator(), ctx, data.images, data.labels, tmp_path / "killed")
    assert len(torch.load(tmp_path / "killed" / "replay.pt", weights_only=True)["epoch_logs"]) == 1
    monkeypatch.setattr(solver, "uge_loss", real_loss)
    resumed, resumed_losses = solver.refine_along_replay(Accelerator(), ctx, data.images, data.labels, tmp_path / "killed")
    assert torch.equal(resumed, replayed) and resumed_losses == losses


def test_per_sample_steps_lower_the_uge_loss(tiny_dataset, tmp_path):
    """The solver optimises what it claims to: the loss on its x_u is below the loss on x_u = x + 0."""
    from accelerate import Accelerator

    ctx, data = _tiny_context(tiny_dataset, per_sample_steps=4, lambda_gm=0.0)
    config = ctx.config
    refined, losses = solver.refine_per_sample(Accelerator(), ctx, data.images, data.labels, None, tmp_path / "ps")
    assert losses["last"]["loss"] < losses["first"]["loss"]
    x = data.images[:8].float() / 255
    index = torch.arange(8)
    before, _ = solver.uge_loss(ctx, x, x, data.labels[:8], index, 0)
    after, _ = solver.uge_loss(ctx, x, refined[:8], data.labels[:8], index, 0)
    assert after < before
    assert (refined - data.images.float() / 255).abs().max() <= config.rho + 1e-6


@pytest.fixture
def no_accelerate_config(tmp_path, monkeypatch):
    """No ACCELERATE_MIXED_PRECISION and no `accelerate config` file: Accelerate's configuration says "no"."""
    import accelerate.commands.config

    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    monkeypatch.setattr(accelerate.commands.config, "default_config_file", str(tmp_path / "no-accelerate-config.yaml"))
    return tmp_path / "no-accelerate-config.yaml"


def test_mixed_precision_follows_accelerates_configuration_unless_given(no_accelerate_config, monkeypatch):
    from uge_hf.methods.gradient_matching import resolve_mixed_precision

    assert resolve_mixed_precision(None) == "no"
    no_accelerate_config.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: 'NO'\n"
                                    "mixed_precision: fp16\nuse_cpu: true\n")  # as `accelerate config` writes it
    assert resolve_mixed_precision(None) == "fp16"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # `accelerate launch` exports it: it wins over the file
    assert resolve_mixed_precision(None) == "bf16"
    assert resolve_mixed_precision("no") == "no"  # the flag wins over both
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp8")
    with pytest.raises(UgeError, match=r"configured with mixed precision 'fp8' \(ACCELERATE_MIXED_PRECISION\).*--mixed-precision"):
        resolve_mixed_precision(None)


def test_the_card_records_the_precision_used_and_another_one_in_the_same_process_is_refused(
        tiny_dataset, tmp_path, no_accelerate_config):
    """The card holds the resolved value, not None; Accelerate keeps one precision per process, so a second run
    asking for another is a one-line error before anything is written (no private Accelerate reset)."""
    options = {**TINY_OPTIONS, "generator_epochs": 1}
    uge_hf.protect(tiny_dataset, output_dir=tmp_path / "default", **options)
    uge = DatasetCard.load(tmp_path / "default" / "README.md").data.to_dict()["uge"]
    assert uge["config"]["mixed_precision"] == "no"
    assert json.loads((tmp_path / "default" / "uge_config.json").read_text())["mixed_precision"] == "no"
    with pytest.raises(UgeError, match=r"already set up in this process with mixed precision 'no'.*new process"):
        uge_hf.protect(tiny_dataset, output_dir=tmp_path / "bf16", mixed_precision="bf16", **options)
    assert not (tmp_path / "bf16").exists()


@pytest.mark.slow
def test_bf16_from_accelerates_environment_in_a_fresh_process(tmp_path):
    """`ACCELERATE_MIXED_PRECISION=bf16` (what `accelerate launch --mixed_precision bf16` exports), no flag: G trains
    in bf16, the card says so, and the bound still holds."""
    import os
    import subprocess
    import sys

    script = f"""
import uge_hf
from tests.conftest import TINY_OPTIONS, make_image_dataset
from datasets import DatasetDict
source = DatasetDict(train=make_image_dataset(32, seed=0), test=make_image_dataset(12, seed=1))
uge_hf.protect(source, output_dir={str(tmp_path / "bf16")!r}, **{{**TINY_OPTIONS, "generator_epochs": 1}})
"""
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "ACCELERATE_MIXED_PRECISION": "bf16", "PYTHONPATH": str(root), "HF_HOME": str(tmp_path / "hf"),
           "UGE_HF_NO_PROGRESS": "1"}
    done = subprocess.run([sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    uge = DatasetCard.load(tmp_path / "bf16" / "README.md").data.to_dict()["uge"]
    assert uge["config"]["mixed_precision"] == "bf16"
    assert uge["results"]["perturbation"]["train"]["linf_levels"] <= uge["pixel_bound"]


# --- issue 12: the bound by construction, releases that stand alone, odd inputs up front ---------------------


def test_quantize_holds_the_bound_for_any_float():
    source = torch.randint(0, 256, (4, 3, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    nasty = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e30, -1e30, 3.4e38, 0.5, -0.2, 1.7])
    protected = nasty[torch.randint(0, len(nasty), source.shape, generator=torch.Generator().manual_seed(1))]
    released = apply.quantize_within_bound(source, protected, 10)
    assert released.dtype == torch.uint8
    assert (released.int() - source.int()).abs().max() <= 10
    not_finite = ~torch.isfinite(protected)
    assert not_finite.any() and torch.equal(released[not_finite], source[not_finite])  # NaN/inf: the source pixel
    assert torch.equal(apply.quantize_within_bound(source, protected.double() * 1e300, 10)[not_finite], source[not_finite])


def test_a_diverged_recipe_is_refused_and_nothing_is_written(tiny_dataset, tmp_path):
    options = {**TINY_OPTIONS, "recipe": {"epochs": 2, "batch_size": 8, "lr": 1e6}}
    with pytest.raises(UgeError, match=r"trajectory resnet18-w4-seed0 diverged: its (loss|weights) .*recipe.lr = 1000000"):
        uge_hf.protect(tiny_dataset, output_dir=tmp_path / "out", **options)
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.partial").exists()


def test_a_loss_that_is_not_finite_stops_every_solver(tiny_dataset):
    ctx, data = _tiny_context(tiny_dataset)
    x = data.images[:8].float() / 255
    x_u = x.clone()
    x_u[0, 0, 0, 0] = float("nan")
    with pytest.raises(UgeError, match="the protection diverged: at step 7 the loss terms are .*nan"):
        solver.uge_loss(ctx, x, x_u, data.labels[:8], torch.arange(8), 7)
    generator = solver.build_generator(ctx.config)
    torch.nn.init.constant_(next(generator.parameters()), float("nan"))
    with pytest.raises(UgeError, match="generator's output is not finite"):
        apply.protect_images(generator, data.images[:4], 0.04, 10, "cpu")


def test_the_writer_rechecks_every_protected_pixel_before_the_release_appears(tiny_dataset, tmp_path, monkeypatch):
    from uge_hf import pipeline

    real = pipeline._replace_images
    monkeypatch.setattr(pipeline, "_replace_images",
                        lambda split, column, images: real(split, column, (images.int() + 11).clamp(0, 255).to(torch.uint8)))
    with pytest.raises(UgeError, match=r"re-check against the source and was not written: pixels train: .* levels > bound 10"):
        uge_hf.protect(tiny_dataset, output_dir=tmp_path / "out", **TINY_OPTIONS)
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.partial").exists()


def test_an_imagefolder_release_stands_alone(tmp_path, monkeypatch):
    """Images given as file paths are embedded (the copied test split too); nothing names this machine."""
    import shutil

    import datasets

    from .conftest import CLASS_NAMES, make_image_dataset

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "my-images"
    pixels = {}
    for split, rows, seed in (("train", 16, 0), ("test", 6, 1)):
        for i, row in enumerate(make_image_dataset(rows, seed=seed)):
            (source / split / CLASS_NAMES[row["category"]]).mkdir(parents=True, exist_ok=True)
            row["picture"].save(source / split / CLASS_NAMES[row["category"]] / f"{i:02d}.png")
            pixels.setdefault(split, {})[f"{i:02d}.png"] = np.asarray(row["picture"])
    (source / "README.md").write_text("---\nlicense: mit\n---\nMy images.\n")
    output = tmp_path / "release"
    uge_hf.protect(str(source), output_dir=output, **TINY_OPTIONS)
    shutil.rmtree(source)

    for path in output.rglob("*"):
        if path.is_file():
            assert str(tmp_path).encode() not in path.read_bytes(), path
    card = DatasetCard.load(output / "README.md")
    assert card.data.pretty_name == "my-images (ungeneralizable)" and "copy of `my-images`" in card.text
    assert card.data.license == "mit" and card.data.source_datasets is None  # the source's license is kept
    loaded = load_dataset(str(output))
    assert loaded["train"].num_rows == 16 and loaded["test"].num_rows == 6
    for split in ("train", "test"):
        for image in loaded[split]["image"]:
            assert image.size == (16, 16)  # decoded from the embedded bytes: the source is gone
    raw = loaded["test"].cast_column("image", datasets.Image(decode=False))["image"]
    for value, image in zip(raw, loaded["test"]["image"]):
        assert value["bytes"] and value["path"] in pixels["test"]  # a file name, not a path
        assert np.array_equal(np.asarray(image), pixels["test"][value["path"]])  # copied unchanged


def test_an_unlabelled_test_split_is_copied_unchanged(tmp_path):
    from datasets import DatasetDict

    from .conftest import make_image_dataset

    test = make_image_dataset(6, seed=1).map(lambda row: {"category": -1})
    source = DatasetDict(train=make_image_dataset(32, seed=0), test=test)
    output = tmp_path / "release"
    uge_hf.protect(source, output_dir=output, **TINY_OPTIONS)
    released = load_release(output)
    assert released["test"]["category"] == [-1] * 6
    uge = DatasetCard.load(output / "README.md").data.to_dict()["uge"]
    assert uge["results"]["test_split"] is None and uge["results"]["authorized"][0]["clean_test_accuracy"] is None
    assert all(check.ok for check in uge_hf.verify_release(output, original=source))


@pytest.mark.parametrize("dtype", ["float32", "int64"])
def test_array_images_are_protected_as_the_user_sees_them(tmp_path, dtype):
    """Grayscale arrays (datasets stores float32 as mode "F", int64 as "I"): released within the bound of the
    arrays' own 8-bit view, not of a near-black conversion; verify --original agrees."""
    from datasets import ClassLabel, Dataset, Features, Image

    rng = np.random.default_rng(0)
    levels = [rng.integers(0, 256, (16, 16)) for _ in range(16)]
    arrays = [(a / 255).astype(np.float32) if dtype == "float32" else a.astype(np.int64) for a in levels]
    source = Dataset.from_dict({"image": arrays, "label": [i % 2 for i in range(16)]},
                               features=Features({"image": Image(), "label": ClassLabel(names=["a", "b"])}))
    output = tmp_path / "release"
    uge_hf.protect(source, output_dir=output, **TINY_OPTIONS)
    for seen, image in zip(levels, load_release(output)["train"]["image"]):
        released = np.asarray(image, dtype=np.int16)
        assert np.abs(released - seen[..., None]).max() <= 10
    assert all(check.ok for check in uge_hf.verify_release(output, original=source))


def test_a_broken_image_in_a_copied_split_fails_before_any_training(tiny_dataset, tmp_path, monkeypatch):
    from datasets import DatasetDict, Image

    from uge_hf.methods import gradient_matching

    test = tiny_dataset["test"].cast_column("picture", Image(decode=False))
    test = test.map(lambda row, i: {"picture": {"bytes": b"broken" if i == 3 else row["picture"]["bytes"], "path": None}},
                    with_indices=True).cast_column("picture", Image())
    monkeypatch.setattr(gradient_matching, "compute_trajectory", lambda *a, **k: pytest.fail("trained before validating"))
    with pytest.raises(UgeError, match="split 'test', row 3, column 'picture': could not decode the image"):
        uge_hf.protect(DatasetDict(train=tiny_dataset["train"], test=test), output_dir=tmp_path / "out", **TINY_OPTIONS)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.uge-work").exists()


def test_gradient_matching_keeps_a_secret_init_private_by_default(tiny_dataset, tmp_path):
    """Without publish_authorized the init comes from a secret seed: in OUTPUT.private/, its sha256 in the card."""
    from uge_hf.specs import build_model, init_state_bytes

    options = {**TINY_OPTIONS, "publish_authorized": False, "generator_epochs": 1, "recipe": {"epochs": 1, "batch_size": 8}}
    output = tmp_path / "release"
    uge_hf.protect(tiny_dataset, output_dir=output, **options)
    private = tmp_path / "release.private"
    weights = private / "authorized" / "resnet18-w4-seed0" / "model.safetensors"
    assert weights.is_file() and not (output / "authorized").exists()
    (net,) = DatasetCard.load(output / "README.md").data.to_dict()["uge"]["authorized"]
    assert net["private"] is True and net["seed"] is None and net["weights"] is None
    assert net["init_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert weights.read_bytes() != init_state_bytes(build_model("resnet18-w4-seed0", 4))  # not the public seed's init
    checks = {c.name: c for c in uge_hf.verify_release(output, authorized_weights=private)}
    assert all(c.ok for c in checks.values()), [str(c) for c in checks.values() if not c.ok]
    with pytest.raises(UgeError, match="private"):
        uge_hf.load_authorized(output)
    model = uge_hf.load_authorized(output, weights=weights)
    assert init_state_bytes(model) == weights.read_bytes()
    assert "secret" in (output / "README.md").read_text()
