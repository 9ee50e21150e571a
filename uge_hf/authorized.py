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
        if path.is_dir():
            path = path / "authorized" / net.spec / "model.safetensors"
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
