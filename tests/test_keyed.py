"""The keyed method end to end: private folder, card, verify, the authorized user's API, key reuse, push refusal."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
import stat

import numpy as np
import pytest
import torch
from datasets import DatasetDict
from typer.testing import CliRunner

import uge_hf
from uge_hf.card import read_card
from uge_hf.cli import app
from uge_hf.config import Recipe
from uge_hf.layout import load_release
from uge_hf.errors import UgeError
from uge_hf.specs import build_model
from uge_hf.training import train_classifier

from .conftest import CLASS_NAMES, KEYED_OPTIONS, make_image_dataset


def private_of(release):
    return release.parent / f"{release.name}.private"


def weights_of(release, spec="resnet18-w4-seed0"):
    return private_of(release) / "authorized" / spec / "model.safetensors"


def test_key_material_goes_to_the_private_folder_only(keyed_release):
    private = private_of(keyed_release)
    assert stat.S_IMODE(private.stat().st_mode) == 0o700
    for path in private.rglob("*"):
        assert stat.S_IMODE(path.stat().st_mode) == (0o700 if path.is_dir() else 0o600), path
    secret = json.loads((private / "key.json").read_text())["secret"]
    for path in keyed_release.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    assert not (keyed_release / "authorized").exists()
    card = read_card(keyed_release)
    assert card.method == "keyed"
    (net,) = card.authorized
    assert net.private is True and net.weights is None and net.input_stage == "key"
    import hashlib

    assert net.init_sha256 == hashlib.sha256(weights_of(keyed_release).read_bytes()).hexdigest()
    assert card.results.method_results["invariance"]["images_over_tolerance"] == 0
    assert card.method_fields["key"]["dimensions"] == 6 * 16  # groups x (16 / 4)^2 regions
    assert card.method_fields["key"]["stage_is_public"] is False  # 6 groups of the 12 cells a 4-pixel tile of 2-pixel grain has


def test_verify_checks_the_private_weights_against_the_card(keyed_release, tmp_path):
    checks = {c.name: c for c in uge_hf.verify_release(keyed_release, authorized_weights=weights_of(keyed_release))}
    assert all(c.ok for c in checks.values()), [str(c) for c in checks.values() if not c.ok]
    assert "= card" in checks["weights resnet18-w4-seed0"].detail
    tampered = tmp_path / "model.safetensors"
    content = bytearray(weights_of(keyed_release).read_bytes())
    content[-1] ^= 1
    tampered.write_bytes(bytes(content))
    checks = {c.name: c for c in uge_hf.verify_release(keyed_release, authorized_weights=tampered)}
    assert not checks["weights resnet18-w4-seed0"].ok and "sha256" in checks["weights resnet18-w4-seed0"].detail


def test_authorized_user_needs_the_private_weights(keyed_release):
    with pytest.raises(UgeError, match="private"):
        uge_hf.load_authorized(keyed_release)
    model = uge_hf.load_authorized(keyed_release, weights=private_of(keyed_release))
    assert (model.key_stage.tile, model.key_stage.groups) == (4, 6)  # the card's key settings
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(model.key_stage(x), uge_hf.load_key(weights_of(keyed_release))(x))
    assert torch.equal(model.key_stage(x), uge_hf.load_key(private_of(keyed_release) / "key.json")(x))
    assert model(x).shape == (2, len(CLASS_NAMES))
    trained, metrics = uge_hf.train_authorized(keyed_release, weights=weights_of(keyed_release), epochs=1)
    assert metrics["method"] == "keyed" and metrics["test_split"] == "test" and 0 <= metrics["test_accuracy"] <= 1
    assert not torch.equal(trained.backbone.state_dict()["head.weight"], model.backbone.state_dict()["head.weight"])


def test_the_authorized_network_trains_bit_for_bit_as_on_clean_data(tmp_path):
    """K(x_u) = K(x): the keyed network's whole trajectory on the release is its trajectory on the clean data.

    The images are uniform noise, so many pixels sit at 0 or 255: at the default pull 0 none is clipped or moved."""
    source = DatasetDict(train=make_image_dataset(24, seed=3))
    uge_hf.protect(source, output_dir=tmp_path / "rel", **KEYED_OPTIONS)
    model = uge_hf.load_authorized(tmp_path / "rel", weights=private_of(tmp_path / "rel"))
    release = load_release(tmp_path / "rel")["train"]  # straight from the shards: load_dataset may answer from its cache
    as_tensor = lambda ds: torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in ds["picture"]])
    clean, protected = as_tensor(source["train"]), as_tensor(release)
    assert not torch.equal(clean, protected)
    labels = torch.tensor(source["train"]["category"])
    recipe = Recipe(epochs=2, batch_size=8)
    on_clean = train_classifier(build_model("resnet18-w4-seed0", 4), clean, labels, recipe, input_stage=model.key_stage)
    on_release = train_classifier(build_model("resnet18-w4-seed0", 4), protected, labels, recipe, input_stage=model.key_stage)
    for (name, a), b in zip(on_clean.state_dict().items(), on_release.state_dict().values()):
        assert torch.equal(a, b), name
    plain = train_classifier(build_model("resnet18-w4-seed0", 4), protected, labels, recipe)  # no key: sees the texture
    assert not torch.allclose(plain.state_dict()["head.weight"], on_clean.state_dict()["head.weight"], atol=1e-3)


def test_a_key_file_protects_more_data_for_the_same_authorized_party(keyed_release, tmp_path):
    more = DatasetDict(train=make_image_dataset(16, seed=5))
    uge_hf.protect(more, output_dir=tmp_path / "more", key_file=str(private_of(keyed_release)), **KEYED_OPTIONS)
    first, second = read_card(keyed_release), read_card(tmp_path / "more")
    assert first.authorized[0].init_sha256 == second.authorized[0].init_sha256
    assert (private_of(tmp_path / "more") / "key.json").read_bytes() == (private_of(keyed_release) / "key.json").read_bytes()
    with pytest.raises(UgeError, match="tile 4 / groups 6 / grain 2"):
        uge_hf.protect(more, output_dir=tmp_path / "other", key_file=str(private_of(keyed_release)),
                       **{**KEYED_OPTIONS, "keyed": {"tile": 8, "groups": 6, "grain": 2}})
    with pytest.raises(UgeError, match="not a uge-hf key file"):
        (tmp_path / "bad.json").write_text("{}")
        uge_hf.protect(more, output_dir=tmp_path / "bad", key_file=str(tmp_path / "bad.json"), **KEYED_OPTIONS)
    with pytest.raises(UgeError, match="output folder"):
        uge_hf.protect(more, **KEYED_OPTIONS)
    with pytest.raises(UgeError, match="key file only applies"):
        uge_hf.protect(more, output_dir=tmp_path / "gm", key_file="x", method="gradient-matching")


def test_push_refuses_key_material(keyed_release, tmp_path):
    leaky = shutil.copytree(keyed_release, tmp_path / "leaky")
    shutil.copy(private_of(keyed_release) / "key.json", leaky / "key.json")
    with pytest.raises(UgeError, match="key material"):
        uge_hf.push_release(leaky, "me/leaky")
    with pytest.raises(UgeError, match="key material"):
        uge_hf.push_release(private_of(keyed_release), "me/leaky")
    checks = {c.name: c for c in uge_hf.verify_release(leaky)}
    assert not checks["no key material"].ok and "key.json" in checks["no key material"].detail


def test_cli_protect_keyed_and_verify_private_weights(tmp_path):
    source = tmp_path / "source"
    DatasetDict(train=make_image_dataset(16, seed=0)).save_to_disk(str(source))
    runner = CliRunner()
    out = tmp_path / "rel"
    result = runner.invoke(app, ["protect", str(source), "--method", "keyed", "--authorized", "resnet18-w4-seed0",
                                 "--set", "keyed.tile=4", "--set", "keyed.groups=6", "--set", "keyed.grain=2",
                                 "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "rel.private" in result.output and "keyed" in result.output
    result = runner.invoke(app, ["verify", str(out), "--authorized-weights", str(private_of(out))])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["protect", str(source), "--method", "nope", "--output", str(tmp_path / "x")])
    # a value outside the field's choices is a usage error of the generated option (click's exit code 2), naming them
    assert result.exit_code == 2 and "nope" in result.output and "gradient-matching" in result.output
    assert "Traceback" not in result.output


def test_evaluate_a_keyed_release_with_its_private_weights(keyed_release, tmp_path):
    from uge_hf.evaluate import EvaluateConfig, evaluate

    source = DatasetDict(train=make_image_dataset(32, seed=0), test=make_image_dataset(12, seed=1))
    config = EvaluateConfig(hackers=["lenet-w2-seed1"], distill=True, epochs=1, peak_epoch=False)
    with pytest.raises(UgeError, match="private"):
        evaluate(keyed_release, source, config, cache_dir=tmp_path / "cache")
    rows = evaluate(keyed_release, source, config, cache_dir=tmp_path / "cache", authorized_weights=private_of(keyed_release))
    schemes = [(r.role, r.scheme) for r in rows]
    assert schemes == [("authorized", "Normal"), ("hacker", "Normal"), ("hacker", "Wrong key"), ("hacker", "No key"),
                       ("hacker", "Distill")]
    assert all(0 <= r.clean <= 1 and 0 <= r.protected <= 1 for r in rows)


def test_review_findings_are_user_errors_not_tracebacks(keyed_release, tmp_path, monkeypatch):
    # the working folder (or a parent) as output: its private folder would land inside it
    monkeypatch.chdir(tmp_path)
    more = DatasetDict(train=make_image_dataset(16, seed=5))
    with pytest.raises(UgeError, match="working folder"):
        uge_hf.protect(more, output_dir=".", overwrite=True, **KEYED_OPTIONS)
    # weights that are not safetensors: one problem line, in verify and in load_authorized
    checks = {c.name: c for c in uge_hf.verify_release(keyed_release, authorized_weights=keyed_release / "README.md")}
    assert not checks["weights resnet18-w4-seed0"].ok and "cannot be read" in checks["weights resnet18-w4-seed0"].detail
    with pytest.raises(UgeError, match="sha256"):
        uge_hf.load_authorized(keyed_release, weights=keyed_release / "README.md")
    # the key file authorizes as the weights do (the backbone's init is public)
    model = uge_hf.load_authorized(keyed_release, weights=private_of(keyed_release) / "key.json")
    x = torch.rand(1, 3, 16, 16)
    assert torch.equal(model.key_stage(x), uge_hf.load_key(weights_of(keyed_release))(x))


def test_key_material_is_found_whatever_its_file_name(keyed_release, tmp_path):
    from uge_hf.verify import key_material

    leaky = Path(shutil.copytree(keyed_release, tmp_path / "leaky"))
    (leaky / "notes.txt").write_bytes((private_of(keyed_release) / "key.json").read_bytes())
    model = uge_hf.load_authorized(keyed_release, weights=private_of(keyed_release))
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, leaky / "finetuned.pt")
    assert key_material(leaky) == ["finetuned.pt", "notes.txt"]
    assert key_material(keyed_release) == []


def test_amplitude_is_recorded_as_applied(tmp_path):
    more = DatasetDict(train=make_image_dataset(16, seed=5))
    uge_hf.protect(more, output_dir=tmp_path / "a", **{**KEYED_OPTIONS, "keyed": {**KEYED_OPTIONS["keyed"], "amplitude": 50}})
    assert read_card(tmp_path / "a").method_fields["key"]["amplitude_levels"] == 10
    with pytest.raises(UgeError, match="keyed.amplitude must be in 1..255"):
        uge_hf.protect(more, output_dir=tmp_path / "b", **{**KEYED_OPTIONS, "keyed": {**KEYED_OPTIONS["keyed"], "amplitude": 0}})


def test_a_pull_beyond_the_bound_is_refused_before_any_work():
    from uge_hf.config import ProtectConfig

    with pytest.raises(UgeError, match=r"keyed.pull \(11\) may not exceed the bound of 10 levels"):
        ProtectConfig(keyed={"pull": 11})


def test_the_card_says_when_the_default_key_stage_is_public(tmp_path):
    """Default settings: 12 groups for the 12 cells of a region, so K subtracts cell means whatever the key."""
    uge_hf.protect(DatasetDict(train=make_image_dataset(16, seed=5)), output_dir=tmp_path / "d", recipe={"epochs": 1})
    assert read_card(tmp_path / "d").method_fields["key"]["stage_is_public"] is True
    assert "At these settings the key stage is not secret" in (tmp_path / "d" / "README.md").read_text()


@pytest.mark.parametrize("method", ["keyed", "lock"])
def test_the_chunk_size_changes_memory_not_bytes(method, tiny_dataset, tmp_path, monkeypatch):
    """Per-row methods process chunks bounded in pixel values (`methods.base.CHUNK_VALUES`): 5-row chunks give the
    same release as one chunk."""
    from uge_hf.methods import base

    from .conftest import KEYED_OPTIONS, LOCK_OPTIONS

    options = KEYED_OPTIONS if method == "keyed" else LOCK_OPTIONS
    uge_hf.protect(tiny_dataset, output_dir=tmp_path / "one", **options)
    key = tmp_path / "one.private" / "key.json"
    uge_hf.protect(tiny_dataset, output_dir=tmp_path / "again", key_file=str(key), **options)
    monkeypatch.setattr(base, "CHUNK_VALUES", 5 * 3 * 16 * 16)
    uge_hf.protect(tiny_dataset, output_dir=tmp_path / "chunked", key_file=str(key), **options)
    for shard in sorted((tmp_path / "again" / "data").glob("*.parquet")):
        assert shard.read_bytes() == (tmp_path / "chunked" / "data" / shard.name).read_bytes(), shard.name
