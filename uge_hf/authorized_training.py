"""The authorized user's training run: the hash-checked initial network trained on the release with the card's recipe.

    model, metrics = uge_hf.train_authorized("me/cifar10-uge", weights="model.safetensors")
"""

from __future__ import annotations

import dataclasses
import os

import torch
from torch import nn

from .authorized import KeyedNetwork, checked_network
from .errors import UgeError
from .progress import library_bars


@library_bars()
def train_authorized(
    repo_or_dir: str | os.PathLike,
    index: int = 0,
    epochs: int | None = None,
    device: str | torch.device | None = None,
    *,
    revision: str | None = None,
    split: str | None = None,
    weights: str | os.PathLike | None = None,
    key: str | os.PathLike | None = None,
    **recipe_overrides,
) -> tuple[nn.Module, dict]:
    """Train the authorized network `index` on the release as its card prescribes; return (model, metrics).

    Starts from `load_authorized` (hash-verified; `weights` as there) and trains on the release's protected split
    (the card's first `protected_splits`, or `split`) with the card's recipe (`epochs` and `recipe_overrides`, e.g.
    `batch_size=64`, replace its fields; the paper's method was fitted to the card's recipe, so changes are at the
    user's risk). A keyed network's key stage is applied before augmentation. A lock release is first unlocked with
    `key` (the publisher's key.json or private folder), so the network trains on the exact source images. The metrics hold the accuracy on the
    training split and, when the release has a `test` or `validation` split, on it. `device`: default CUDA when
    available, else CPU. Returns the model `load_authorized` returns, trained.
    """
    from .card import read_card
    from .config import Recipe
    from .data import held_out_split, resolve_columns, to_tensors
    from .fetch import fetch_release
    from .progress import is_main_process
    from .layout import load_release, release_data_files
    from .training import accuracy, train_classifier

    folder = fetch_release(repo_or_dir, revision)
    card = read_card(folder)
    if card.method == "lock" and key is None:
        raise UgeError("a lock release is learnt from once unlocked: pass key=PATH (the publisher's key.json or private folder)")
    net = card.authorized_entry(index)
    model = checked_network(folder, net, weights)
    backbone, stage = (model.backbone, model.key_stage) if isinstance(model, KeyedNetwork) else (model, None)
    if epochs is not None:
        recipe_overrides["epochs"] = epochs
    unknown = sorted(set(recipe_overrides) - {f.name for f in dataclasses.fields(Recipe)})
    if unknown:
        raise UgeError(f"unknown recipe fields {', '.join(unknown)}; the recipe has {', '.join(f.name for f in dataclasses.fields(Recipe))}")
    recipe = dataclasses.replace(card.recipe, **recipe_overrides)
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")

    train_split = split or card.protected_splits[0]
    available = release_data_files(folder)
    test_split = held_out_split(available, exclude=[train_split])
    wanted = [train_split] + ([test_split] if test_split else [])
    if card.method == "lock":
        from datasets import DatasetDict

        from .unlocking import unlock

        missing = [name for name in wanted if name not in available]  # as load_release says it, not a KeyError
        if missing:
            raise UgeError(f"the release {folder} has no shards for split(s) {', '.join(missing)} (it has"
                           f" {', '.join(available) or 'none'})")
        unlocked = unlock(folder, key)
        splits = DatasetDict({name: unlocked[name] for name in wanted})
    else:
        splits = load_release(folder, wanted)
    image_column, label_column = resolve_columns(splits[train_split], card.image_column, card.label_column)
    data = {
        name: to_tensors(ds, image_column, label_column, card.image_size, card.class_names, progress=is_main_process())
        for name, ds in splits.items()
    }
    train = data[train_split]
    train_classifier(backbone, train.images, train.labels, recipe, device, description=f"training {net.spec}",
                     input_stage=stage)
    metrics = {
        "spec": net.spec,
        "method": card.method,
        "train_split": train_split,
        "train_rows": len(train.labels),
        "epochs": recipe.epochs,
        "train_accuracy": round(accuracy(backbone, train.images, train.labels, device, input_stage=stage), 4),
        "test_split": test_split,
        "test_accuracy": None,
    }
    if test_split:
        test = data[test_split]
        metrics["test_accuracy"] = round(accuracy(backbone, test.images, test.labels, device, input_stage=stage), 4)
    return model.cpu(), metrics
