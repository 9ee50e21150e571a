"""The authorized user's API on a tiny release: load_authorized (hash-checked) and train_authorized (the card's recipe)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch

import uge_hf
from uge_hf.card import read_card
from uge_hf.errors import UgeError
from uge_hf.specs import build_model, init_state_bytes


SPEC = "resnet18-w4-seed0"


@pytest.fixture
def release(tiny_release) -> Path:
    return tiny_release


@pytest.fixture
def folder(release_copy) -> Path:
    return release_copy


def test_load_authorized_is_the_declared_init(release):
    model = uge_hf.load_authorized(release)
    expected = build_model(SPEC, 4).state_dict()
    assert type(model).__name__ == "ResNet18" and model.training
    assert model.state_dict().keys() == expected.keys()
    assert all(torch.equal(model.state_dict()[k], expected[k]) for k in expected)
    assert hashlib.sha256(init_state_bytes(model)).hexdigest() == read_card(release).authorized[0].init_sha256


def test_load_authorized_refuses_an_edited_hash(folder):
    real = read_card(folder).authorized[0].init_sha256
    forged = ("f" if real[0] != "f" else "e") + real[1:]
    card = folder / "README.md"
    card.write_text(card.read_text().replace(real, forged))
    with pytest.raises(UgeError, match=f"has sha256 {real} but the card declares {forged}"):
        uge_hf.load_authorized(folder)


def test_load_authorized_refuses_swapped_weights(folder):
    (folder / "authorized" / f"{SPEC}.safetensors").write_bytes(init_state_bytes(build_model("resnet18-w4-seed7", 4)))
    with pytest.raises(UgeError, match=f"authorized/{SPEC}.safetensors has sha256 .* but the card declares"):
        uge_hf.load_authorized(folder)


def test_load_authorized_refuses_weights_and_card_swapped_together(folder):
    other = init_state_bytes(build_model("resnet18-w4-seed7", 4))
    real = read_card(folder).authorized[0].init_sha256
    (folder / "authorized" / f"{SPEC}.safetensors").write_bytes(other)
    card = folder / "README.md"
    card.write_text(card.read_text().replace(real, hashlib.sha256(other).hexdigest()))
    with pytest.raises(UgeError, match=f"is not that of {SPEC} with 4 classes rebuilt here \\({real}\\)"):
        uge_hf.load_authorized(folder)


def test_load_authorized_user_errors(folder):
    with pytest.raises(UgeError, match="no authorized network 2 .*0: resnet18-w4-seed0"):
        uge_hf.load_authorized(folder, index=2)
    (folder / "authorized" / f"{SPEC}.safetensors").unlink()
    with pytest.raises(UgeError, match=f"no authorized/{SPEC}.safetensors"):
        uge_hf.load_authorized(folder)
    with pytest.raises(UgeError, match="no such release folder"):
        uge_hf.load_authorized(folder / "absent")


def test_a_weights_path_outside_the_release_is_refused(folder):
    card = folder / "README.md"
    card.write_text(card.read_text().replace(f"weights: authorized/{SPEC}.safetensors", "weights: ../elsewhere.safetensors"))
    with pytest.raises(UgeError, match="'../elsewhere.safetensors', which is outside the release folder"):
        uge_hf.load_authorized(folder)


def test_an_hf_cache_snapshot_of_symlinks_loads_and_verifies(release, tmp_path):
    """snapshot_download's folders hold symlinks into blobs/: following them must not count as leaving the release."""
    blobs, snapshot = tmp_path / "blobs", tmp_path / "snapshots" / "0123abc"
    blobs.mkdir()
    for file in (f for f in release.rglob("*") if f.is_file()):
        relative = file.relative_to(release)
        blob = blobs / hashlib.sha256(str(relative).encode()).hexdigest()
        shutil.copyfile(file, blob)
        (snapshot / relative).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / relative).symlink_to(blob)
    assert type(uge_hf.load_authorized(snapshot)).__name__ == "ResNet18"
    assert all(check.ok for check in uge_hf.verify_release(snapshot))


def test_hub_id_offline_is_one_clear_error():
    with pytest.raises(UgeError, match="offline mode is on .* not in the local HF cache") as error:
        uge_hf.load_authorized("me/never-downloaded-uge")
    assert "\n" not in str(error.value)


def test_a_hub_id_is_fetched_as_a_dataset_snapshot(release, monkeypatch):
    import huggingface_hub

    calls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kw: calls.append((repo_id, kw)) or str(release))
    uge_hf.load_authorized("me/cifar-uge", revision="v1")
    _, metrics = uge_hf.train_authorized("me/cifar-uge", epochs=1)
    assert calls == [
        ("me/cifar-uge", {"repo_type": "dataset", "revision": "v1", "allow_patterns": ["README.md", "authorized/*"]}),
        ("me/cifar-uge", {"repo_type": "dataset", "revision": None, "allow_patterns": None}),
    ]
    assert metrics["test_split"] == "test"


def test_train_authorized_follows_the_card_and_reports_metrics(release):
    model, metrics = uge_hf.train_authorized(release, epochs=1, device="cpu")
    init = build_model(SPEC, 4).state_dict()
    assert type(model) is type(build_model(SPEC, 4)) and model.state_dict().keys() == init.keys()  # the card's network
    assert metrics["spec"] == SPEC and metrics["epochs"] == 1
    assert metrics["train_split"] == "train" and metrics["train_rows"] == 32
    assert metrics["test_split"] == "test"
    assert 0 <= metrics["train_accuracy"] <= 1 and 0 <= metrics["test_accuracy"] <= 1
    trained = model.state_dict()
    init = build_model(SPEC, 4).state_dict()
    assert any(not torch.equal(trained[k], init[k]) for k in init if trained[k].is_floating_point())


def test_train_authorized_with_the_recipe_is_reproducible_and_overrides_are_checked(release):
    _, first = uge_hf.train_authorized(release, epochs=1, batch_size=16)
    _, second = uge_hf.train_authorized(release, epochs=1, batch_size=16)
    assert first == second  # the card's recipe seeds the data order and the augmentation
    with pytest.raises(UgeError, match="unknown recipe fields learning_rate"):
        uge_hf.train_authorized(release, learning_rate=0.1)


# --- issue 14: the authorized network as a Hub model (PyTorchModelHubMixin) ------------------------------------------


def test_a_private_folders_network_loads_with_from_pretrained_and_round_trips(keyed_release, tmp_path):
    """`authorized/SPEC/` of the private folder is a from_pretrained folder as it is; save_pretrained writes the same
    bytes (sha256 = the card's init_sha256) and the copy rebuilds the same network."""
    from uge_hf import AuthorizedNetwork

    (net,) = read_card(keyed_release).authorized
    folder = keyed_release.parent / f"{keyed_release.name}.private" / "authorized" / net.spec
    loaded = AuthorizedNetwork.from_pretrained(folder, release=keyed_release)
    assert loaded.entry.init_sha256 == net.init_sha256 and not loaded.training
    loaded.save_pretrained(tmp_path / "copy")
    saved = (tmp_path / "copy" / "model.safetensors").read_bytes()
    assert saved == (folder / "model.safetensors").read_bytes() and hashlib.sha256(saved).hexdigest() == net.init_sha256
    again = AuthorizedNetwork.from_pretrained(tmp_path / "copy")
    images = torch.rand(2, 3, 16, 16)
    assert torch.equal(again(images), loaded(images))
    # the folder is also what load_authorized's weights= takes
    assert isinstance(uge_hf.load_authorized(keyed_release, weights=tmp_path / "copy"), type(loaded.network))


def test_from_pretrained_refuses_tampered_weights_and_another_releases_entry(keyed_release, tiny_release, tmp_path):
    from uge_hf import AuthorizedNetwork

    (net,) = read_card(keyed_release).authorized
    folder = Path(shutil.copytree(keyed_release.parent / f"{keyed_release.name}.private" / "authorized" / net.spec,
                                  tmp_path / "net"))
    with pytest.raises(UgeError, match="does not: these are not its authorized weights"):
        AuthorizedNetwork.from_pretrained(folder, release=tiny_release)  # another release's card
    content = bytearray((folder / "model.safetensors").read_bytes())
    content[-1] ^= 1
    (folder / "model.safetensors").write_bytes(bytes(content))
    with pytest.raises(UgeError, match=f"but the card declares {net.init_sha256}.*do not use these weights"):
        AuthorizedNetwork.from_pretrained(folder)
    with pytest.raises(UgeError, match="has sha256"):
        uge_hf.load_authorized(keyed_release, weights=folder)


def test_public_weights_from_a_release_and_trained_weights_keep_an_integrity_check(tiny_release, tmp_path):
    from uge_hf import AuthorizedNetwork

    network = AuthorizedNetwork.from_release(tiny_release)
    network.save_pretrained(tmp_path / "init")
    declared = read_card(tiny_release).authorized[0]
    assert (tmp_path / "init" / "model.safetensors").read_bytes() == (tiny_release / declared.weights).read_bytes()
    assert AuthorizedNetwork.from_pretrained(tmp_path / "init", release=tiny_release).entry.spec == declared.spec
    with torch.no_grad():  # a training step's worth of change
        next(network.parameters()).add_(0.01)
    network.save_pretrained(tmp_path / "trained")
    config = (tmp_path / "trained" / "config.json").read_text()
    assert "weights_sha256" in config and "weights_sha256" not in (tmp_path / "init" / "config.json").read_text()
    trained = AuthorizedNetwork.from_pretrained(tmp_path / "trained")
    assert torch.equal(next(trained.parameters()), next(network.parameters()))
    (tmp_path / "trained" / "model.safetensors").write_bytes((tmp_path / "init" / "model.safetensors").read_bytes())
    with pytest.raises(UgeError, match="but config.json declares"):
        AuthorizedNetwork.from_pretrained(tmp_path / "trained")
