"""The authorized user's side: the declared initial network (hash-verified) and the card's training recipe.

    model = uge_hf.load_authorized("me/cifar10-uge")                                   # public weights (paper's method)
    model = uge_hf.load_authorized("me/cifar10-uge", weights="cifar10-uge.private")    # keyed: weights from the publisher
    key_stage = uge_hf.load_key("model.safetensors")                                   # for your own training loop

The weights check lives here once (`weight_problems`): `verify`, `evaluate` and the demo call it. Training the
authorized network as the card prescribes is `uge_hf.train_authorized` (`authorized_training`): this module is
read by the release checks and does not import the trainer.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from .errors import UgeError

if TYPE_CHECKING:
    from .card import AuthorizedEntry

KEY_STAGE_PREFIX = "key_stage."
BACKBONE_PREFIX = "backbone."


class KeyedNetwork(nn.Module):
    """backbone(normalize(K(x))) for [0, 1] images (N, C, H, W): the keyed method's authorized network.

    `key_stage` is fixed (buffers only). For training, apply `key_stage` to whole images **before** augmentation and
    train `backbone` on the normalized result (`uge_hf.training.train_classifier(backbone, ..., input_stage=key_stage)`);
    `forward` is for inference on un-augmented images.
    """

    def __init__(self, key_stage: nn.Module, backbone: nn.Module):
        super().__init__()
        self.key_stage = key_stage
        self.backbone = backbone

    def forward(self, images):
        from .inputs import normalize

        return self.backbone(normalize(self.key_stage(images)))


class AuthorizedNetwork(nn.Module, PyTorchModelHubMixin, library_name="uge-hf", tags=["uge", "uge-hf"]):
    """An authorized network that loads the way Hub models do: `save_pretrained(dir)` writes `config.json` (the
    card's entry for it: spec, classes, `init_sha256`, input stage) and `model.safetensors` (exactly the bytes the
    release declares), and `AuthorizedNetwork.from_pretrained(dir_or_model_repo)` rebuilds it only after the same
    checks as `load_authorized`: the file's sha256 must be `init_sha256` and its backbone the spec rebuilt here.

    A private folder's `authorized/SPEC/` (what the publisher hands out) is such a folder as it is:
    `AuthorizedNetwork.from_pretrained("out.private/authorized/resnet18-seed0")`. With `release=` (a release folder
    or Hub id), the entry must also be the one that release's card declares for that spec. Weights that changed
    (after training) are saved with their own `weights_sha256` and load with that integrity check only.

    `network` is the backbone (normalized (N, 3, H, W) inputs -> (N, classes) logits) or a `KeyedNetwork` ([0, 1]
    images); `forward` calls it. Errors are UgeErrors naming the file and what does not match.
    """

    def __init__(self, config: dict, network: nn.Module | None = None):
        super().__init__()
        self.entry = _entry_of(config)
        if network is None:  # only a public init can be rebuilt from the spec alone
            if self.entry.input_stage == "key" or self.entry.seed is None:
                raise UgeError(f"{self.entry.spec}'s initial weights are not public: load them with"
                               " AuthorizedNetwork.from_pretrained(FOLDER) or from_release(RELEASE, weights=...)")
            from .specs import build_model

            network = build_model(self.entry.spec, self.entry.num_classes)
        self.network = network

    def forward(self, images):
        return self.network(images)

    @classmethod
    def from_release(cls, repo_or_dir: str | os.PathLike, index: int = 0, revision: str | None = None,
                     weights: str | os.PathLike | None = None) -> AuthorizedNetwork:
        """`load_authorized(...)`, wrapped with the card's entry as its config (ready for `save_pretrained`)."""
        from .fetch import fetch_release

        folder = fetch_release(repo_or_dir, revision, allow_patterns=["README.md", "authorized/*"])
        net = authorized_entry(folder, index)
        return cls(config=_config_of(net), network=checked_network(folder, net, weights))

    def weights_content(self) -> bytes:
        """The network's weights as the release stores them (keyed: `key_stage.*` + `backbone.*`; else the backbone's
        state dict), as one safetensors file without metadata: unchanged weights give the declared bytes."""
        from safetensors.torch import save

        from .files import weights_tensors

        if isinstance(self.network, KeyedNetwork):
            return save({**weights_tensors(self.network.key_stage, KEY_STAGE_PREFIX),
                         **weights_tensors(self.network.backbone, BACKBONE_PREFIX)})
        return save(weights_tensors(self.network))

    def _save_pretrained(self, save_directory: Path) -> None:
        import json

        from .files import atomic_write

        content = self.weights_content()
        digest = hashlib.sha256(content).hexdigest()
        config = _config_of(self.entry)
        if digest != self.entry.init_sha256:  # trained: its own hash, not the card's init
            config["weights_sha256"] = digest
        atomic_write(Path(save_directory) / "model.safetensors", lambda partial: partial.write_bytes(content))
        (Path(save_directory) / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision: str | None, cache_dir, force_download: bool,
                         local_files_only: bool, token, config: dict | None = None, release=None,
                         **unused) -> AuthorizedNetwork:
        if config is None:
            raise UgeError(f"{model_id} has no config.json: not an authorized network's folder")
        folder = Path(model_id)
        if folder.is_dir():
            path = folder / "model.safetensors"
        else:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(model_id, "model.safetensors", revision=revision, cache_dir=cache_dir,
                                        force_download=force_download, token=token, local_files_only=local_files_only))
        if not path.is_file():
            raise UgeError(f"{model_id} has no model.safetensors")
        entry = _entry_of(config)
        if release is not None:
            from .card import read_card
            from .fetch import fetch_release

            declared = [n for n in read_card(fetch_release(release, allow_patterns=["README.md"])).authorized
                        if n.spec == entry.spec]
            if not declared or declared[0].init_sha256 != entry.init_sha256:
                raise UgeError(f"{path.parent}/config.json declares {entry.spec} with init sha256 {entry.init_sha256},"
                               f" but the card of {release} does not: these are not its authorized weights")
        content = path.read_bytes()
        trained = config.get("weights_sha256")
        if trained is not None:
            actual = hashlib.sha256(content).hexdigest()
            problems = [] if actual == trained else [f"{path} has sha256 {actual} but config.json declares {trained}"]
        else:
            problems = weight_problems(entry, content, str(path))
        if problems:
            raise UgeError("; ".join(problems) + ": do not use these weights")
        return cls(config=config, network=build_authorized(entry, content)).eval()  # as Hub models load: .train() to train


def _config_of(net: AuthorizedEntry) -> dict:
    """The `config.json` of an authorized network: its card entry, marked private (its weights travel beside it)."""
    return {**net.to_dict(), "weights": None, "private": True}


def _entry_of(config: dict) -> AuthorizedEntry:
    """The card entry a config.json holds (a private folder's, or `save_pretrained`'s); UgeError if it is not one."""
    from .card import AuthorizedEntry

    if not isinstance(config, dict):
        raise UgeError("config.json is not a mapping: not an authorized network's config")
    try:
        return AuthorizedEntry.from_dict({**config, "weights": None, "private": True}, 0)
    except UgeError as e:
        raise UgeError(f"config.json is not an authorized network's: {e}") from None


def load_authorized(repo_or_dir: str | os.PathLike, index: int = 0, revision: str | None = None,
                    weights: str | os.PathLike | None = None) -> nn.Module:
    """The release's authorized network `index` with its initial weights, on CPU, in train mode.

    Public weights (the paper's method) are read from the release; private ones (the keyed method) from `weights`:
    the `model.safetensors` the publisher gave you, or their private folder. Either way the file's sha256 must equal
    the card's `init_sha256` and its backbone must equal the spec rebuilt on this machine (`uge_hf.init_sha256`).
    Returns the backbone (public) or a `KeyedNetwork` (keyed). Any mismatch is a UgeError that names it.
    A Hub id is downloaded (only the card and `authorized/`).
    """
    from .fetch import fetch_release

    folder = fetch_release(repo_or_dir, revision, allow_patterns=["README.md", "authorized/*"])
    return checked_network(folder, authorized_entry(folder, index), weights)


def checked_network(folder: Path, net: AuthorizedEntry, weights: str | os.PathLike | None) -> nn.Module:
    """`net`'s network from its weights (the release's, or `weights`), after `weight_problems` found none."""
    content = read_weights(folder, net, weights)
    problems = weight_problems(net, content)
    if problems:
        raise UgeError("; ".join(problems) + ": do not train from these weights")
    return build_authorized(net, content)


def load_key(path: str | os.PathLike) -> nn.Module:
    """The key stage K as a fixed `torch.nn.Module`: [0, 1] float images (N, C, H, W) -> keyed images, same shape.

    `path`: an authorized `model.safetensors`, a `key.json`, or a private folder holding one. Apply K to whole images
    before any crop or flip, in training and at test time; a K applied after augmentation no longer removes the
    perturbation, and the network learns the shortcut like any other (see the card).
    """
    from .key import KeyStage

    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path))
        except (FileNotFoundError, SafetensorError, OSError) as e:
            raise UgeError(f"cannot read the weights file {path}: {e}") from None
        return _key_stage(tensors, path)
    from .key import load_secret_key

    stage: KeyStage = load_secret_key(path).stage()
    return stage


def authorized_entry(folder: Path, index: int) -> AuthorizedEntry:
    """The card's `uge.authorized[index]` (the card checked by `read_card`); UgeError naming the declared ones."""
    from .card import read_card

    return read_card(folder).authorized_entry(index)


def read_weights(folder: Path, net: AuthorizedEntry, weights: str | os.PathLike | None = None) -> bytes:
    """The bytes of `net`'s initial weights: from `weights` (a file, a private folder, or a keyed release's key.json)
    if given, else the release.

    Raises UgeError when they are private and `weights` is not given, or the file is missing.
    """
    from .layout import release_path

    if weights is not None:
        path = Path(weights)
        if path.is_dir():  # a private folder, or one network's folder (its authorized/SPEC/, a save_pretrained one)
            path = path / "model.safetensors" if (path / "model.safetensors").is_file() else path / "authorized" / net.spec / "model.safetensors"
        if path.suffix == ".json" and net.input_stage == "key" and path.is_file():
            # a key file authorizes too: the backbone's init is public (its spec), the key stage comes from the key
            from .key import load_secret_key

            return authorized_weights(net.spec, load_secret_key(path, net.num_classes).stage(), net.num_classes)
    elif net.weights:
        path = release_path(folder, net.weights)
    elif net.input_stage == "unlock":  # a lock release: the key authorizes, the network's init is public
        from .specs import build_model, init_state_bytes

        return init_state_bytes(build_model(net.spec, net.num_classes))
    else:
        raise UgeError(
            f"the authorized weights of {net.spec} are private (not in the release): pass weights=PATH"
            " (`--authorized-weights PATH`), the model.safetensors or private folder the publisher gave you"
        )
    if not path.is_file():
        where = f"no weights file at {path}" if weights is not None else f"the release has no {net.weights}"
        raise UgeError(f"{where} (the initial weights of {net.spec})")
    return path.read_bytes()


def weight_problems(net: AuthorizedEntry, content: bytes, name: str | None = None) -> list[str]:
    """Why `content` (the file `name`) is not `net`'s declared initial weights ([] when it is).

    Checks sha256(content) == the card's `init_sha256`, and that the backbone equals the spec rebuilt on this
    machine: the whole file for public weights (`uge_hf.init_sha256`), the `backbone.*` tensors of a keyed file; a
    secret init (no seed in the card) must hold the spec's architecture.
    """
    from safetensors.torch import load

    from .specs import build_model, init_sha256

    problems = []
    name = name or net.weights or f"the weights of {net.spec}"
    actual = hashlib.sha256(content).hexdigest()
    if actual != net.init_sha256:
        problems.append(f"{name} has sha256 {actual} but the card declares {net.init_sha256}")
    try:
        if net.input_stage == "key":
            tensors = load(content)
            backbone = {k.removeprefix(BACKBONE_PREFIX): v for k, v in tensors.items() if k.startswith(BACKBONE_PREFIX)}
            rebuilt = build_model(net.spec, net.num_classes).state_dict()
            if backbone.keys() != rebuilt.keys() or not all(torch.equal(backbone[k], rebuilt[k]) for k in rebuilt):
                problems.append(f"the backbone in the weights is not {net.spec} with {net.num_classes} classes rebuilt here")
            if not any(k.startswith(KEY_STAGE_PREFIX) for k in tensors):
                problems.append("the weights hold no key stage")
        elif net.seed is None:  # a secret init: the weights must fit the spec's architecture, exactly
            tensors = load(content)
            expected = build_model(net.spec, net.num_classes).state_dict()
            if tensors.keys() != expected.keys() or any(tensors[k].shape != expected[k].shape for k in expected):
                problems.append(f"{name} does not hold a {net.arch} of width {net.width} with {net.num_classes} classes")
        else:
            rebuilt = init_sha256(net.spec, net.num_classes)
            if net.init_sha256 != rebuilt:
                problems.append(f"the card's init_sha256 {net.init_sha256} is not that of {net.spec} with"
                                f" {net.num_classes} classes rebuilt here ({rebuilt})")
    except Exception as e:  # untrusted bytes: whatever safetensors or torch raise is a problem to report, not a crash
        problems.append(f"{name} cannot be read as the weights of {net.spec}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    return problems


def authorized_weights(spec: str, stage: nn.Module, num_classes: int) -> bytes:
    """A keyed authorized network's initial weights as one safetensors file: `key_stage.*` buffers (the key stage
    `stage`) + `backbone.*` (the spec's seeded init). Its sha256 is the card's `init_sha256`."""
    from safetensors.torch import save

    from .files import weights_tensors
    from .specs import build_model

    return save({**weights_tensors(stage, KEY_STAGE_PREFIX), **weights_tensors(build_model(spec, num_classes), BACKBONE_PREFIX)})


def build_authorized(net: AuthorizedEntry, content: bytes) -> nn.Module:
    """The network of (checked) weights `content`: the backbone, or a `KeyedNetwork` for a keyed entry."""
    from safetensors.torch import load

    from .specs import build_model

    tensors = load(content)
    model = build_model(net.spec, net.num_classes)
    if net.input_stage != "key":
        model.load_state_dict(tensors, strict=True)
        return model.train()
    model.load_state_dict({k.removeprefix(BACKBONE_PREFIX): v for k, v in tensors.items() if k.startswith(BACKBONE_PREFIX)})
    return KeyedNetwork(_key_stage(tensors, net.spec), model.train())


def _key_stage(tensors: dict, source) -> nn.Module:
    from .key import KeyStage

    try:
        group_of, sign = tensors[KEY_STAGE_PREFIX + "group_of"], tensors[KEY_STAGE_PREFIX + "sign"]
        tile, groups = tensors[KEY_STAGE_PREFIX + "geometry"].tolist()
    except KeyError:
        raise UgeError(f"{source} holds no key stage (it is not a keyed network's weights)") from None
    return KeyStage(group_of, sign, tile, groups)
