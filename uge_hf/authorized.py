"""The authorized user's side: the declared initial network (hash-verified) and the card's training recipe.

    model = uge_hf.load_authorized("me/cifar10-uge")             # or a local release folder
    model, metrics = uge_hf.train_authorized("me/cifar10-uge")
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import torch
from torch import nn

from .errors import UgeError

TEST_SPLITS = ("test", "validation")  # a held-out split the metrics report, in this order of preference


def load_authorized(repo_or_dir: str | os.PathLike, index: int = 0, revision: str | None = None) -> nn.Module:
    """The release's authorized network `index` with its released initial weights, on CPU, in train mode.

    The architecture is rebuilt from the card (`uge.authorized[index]`: spec, arch, width, seed, num_classes);
    the weights are loaded from the released `.safetensors` file after checking that its sha256 equals the
    card's `init_sha256` AND that of the spec rebuilt on this machine (`uge_hf.init_sha256`). Any mismatch is
    a UgeError that names it. A Hub id is downloaded (only the card and `authorized/`).
    """
    from .hub import fetch_release

    folder = fetch_release(repo_or_dir, revision, allow_patterns=["README.md", "authorized/*"])
    return _load_net(folder, _net(folder, index))


def train_authorized(
    repo_or_dir: str | os.PathLike,
    index: int = 0,
    epochs: int | None = None,
    device: str | torch.device | None = None,
    *,
    revision: str | None = None,
    split: str | None = None,
    **recipe_overrides,
) -> tuple[nn.Module, dict]:
    """Train the authorized network `index` on the release as its card prescribes; return (model, metrics).

    Starts from `load_authorized` (hash-verified) and trains on the release's protected split (the card's first
    `protected_splits`, or `split`) with the card's recipe (`epochs` and `recipe_overrides`, e.g. `batch_size=64`,
    replace its fields: the protection was fitted to the card's recipe, so changes are at the user's risk). The
    metrics hold the accuracy on the training split and, when the release has a `test` or `validation` split,
    on it. `device`: default CUDA when available, else CPU.
    """
    from .card import read_uge_block
    from .config import Recipe
    from .data import resolve_columns, to_tensors
    from .hub import fetch_release
    from .progress import is_main_process
    from .training import accuracy, train_classifier
    from .release import load_release

    folder = fetch_release(repo_or_dir, revision)
    net = _net(folder, index)
    model = _load_net(folder, net)
    uge = read_uge_block(folder)
    recipe = Recipe(**uge["recipe"])
    if epochs is not None:
        recipe_overrides["epochs"] = epochs
    unknown = sorted(set(recipe_overrides) - {f.name for f in dataclasses.fields(Recipe)})
    if unknown:
        raise UgeError(f"unknown recipe fields {', '.join(unknown)}; the recipe has {', '.join(f.name for f in dataclasses.fields(Recipe))}")
    recipe = dataclasses.replace(recipe, **recipe_overrides)
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")

    train_split = split or uge["protected_splits"][0]
    test_split = next((s for s in TEST_SPLITS if s != train_split and _has_split(folder, s)), None)
    splits = load_release(folder, [train_split] + ([test_split] if test_split else []))
    image_column, label_column = resolve_columns(splits[train_split], uge["columns"]["image"], uge["columns"]["label"])
    size = tuple(uge["input"]["image_size"])
    data = {
        name: to_tensors(ds, image_column, label_column, size, uge["class_names"], progress=is_main_process())
        for name, ds in splits.items()
    }
    train = data[train_split]
    train_classifier(model, train.images, train.labels, recipe, device, description=f"training {net['spec']}")
    metrics = {
        "spec": net["spec"],
        "train_split": train_split,
        "train_rows": len(train.labels),
        "epochs": recipe.epochs,
        "train_accuracy": round(accuracy(model, train.images, train.labels, device), 4),
        "test_split": test_split,
        "test_accuracy": None,
    }
    if test_split:
        test = data[test_split]
        metrics["test_accuracy"] = round(accuracy(model, test.images, test.labels, device), 4)
    return model.cpu(), metrics


def _has_split(folder: Path, split: str) -> bool:
    from .release import release_data_files

    return split in release_data_files(folder)


def _net(folder: Path, index: int) -> dict:
    """The card's `uge.authorized[index]`, its fields checked."""
    from .card import read_uge_block

    uge = read_uge_block(folder)
    nets = uge.get("authorized") or []
    if not isinstance(index, int) or not 0 <= index < len(nets):
        listed = ", ".join(f"{i}: {n.get('spec')}" for i, n in enumerate(nets)) or "none"
        raise UgeError(f"no authorized network {index} in {folder}/README.md (it declares {listed})")
    net = nets[index]
    missing = [key for key in ("spec", "num_classes", "init_sha256", "weights") if key not in net]
    if missing:
        raise UgeError(f"uge.authorized[{index}] of {folder}/README.md lacks {', '.join(missing)}")
    return net


def _load_net(folder: Path, net: dict) -> nn.Module:
    """Rebuild `net`'s architecture from its spec and load the released weights, after the two hash checks."""
    from safetensors.torch import load

    from .specs import ModelSpec, build_model, init_sha256
    from .verify import release_path

    spec = ModelSpec.parse(net["spec"])
    for key, value in (("arch", spec.arch), ("width", spec.resolved_width), ("seed", spec.seed)):
        if key in net and net[key] != value:
            raise UgeError(f"the card declares {key} {net[key]!r} for {net['spec']}, but the spec means {value!r}")
    path = release_path(folder, net["weights"])
    if not path.is_file():
        raise UgeError(f"the release has no {net['weights']} (the initial weights of {net['spec']})")
    content = path.read_bytes()
    actual = hashlib.sha256(content).hexdigest()
    if actual != net["init_sha256"]:
        raise UgeError(
            f"{net['weights']} has sha256 {actual}, but the card declares {net['init_sha256']}: the weights file"
            " or the card was changed; do not train from it"
        )
    rebuilt = init_sha256(spec, net["num_classes"])
    if net["init_sha256"] != rebuilt:
        raise UgeError(
            f"the card's init_sha256 {net['init_sha256']} for {net['spec']} ({net['num_classes']} classes) is not"
            f" the sha256 of that spec rebuilt here ({rebuilt}): the release does not hold the declared network"
        )
    model = build_model(spec, net["num_classes"])
    try:
        model.load_state_dict(load(content), strict=True)
    except (RuntimeError, ValueError) as e:  # unreachable when both hashes match; kept for a clear message
        raise UgeError(f"{net['weights']} does not fit {net['spec']}: {e}") from None
    return model.train()
