"""Shared fixtures: tiny datasets and a tiny, fast protection config."""

from __future__ import annotations

import os

# Before anything imports huggingface_hub, which reads these once: no Hub retries, no progress bars in tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("UGE_HF_NO_PROGRESS", "1")

import shutil
from pathlib import Path

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value
from PIL import Image as PILImage

CLASS_NAMES = ["cat", "dog", "ship", "frog"]


def make_image_dataset(num_rows: int = 32, size: int = 16, seed: int = 0, extra_column: bool = True) -> Dataset:
    """Random RGB images whose mean colour depends on the class, so a net can learn something."""
    rng = np.random.default_rng(seed)
    labels = [i % len(CLASS_NAMES) for i in range(num_rows)]
    images = []
    for label in labels:
        base = rng.integers(0, 256, (size, size, 3)).astype(np.int16)
        base[..., label % 3] = base[..., label % 3] // 2 + 128
        images.append(PILImage.fromarray(base.clip(0, 255).astype(np.uint8), mode="RGB"))
    columns = {"picture": images, "category": labels}
    features = {"picture": Image(), "category": ClassLabel(names=CLASS_NAMES)}
    if extra_column:
        columns["caption"] = [f"row {i}" for i in range(num_rows)]
        features["caption"] = Value("string")
    return Dataset.from_dict(columns, features=Features(features))


@pytest.fixture
def tiny_dataset() -> DatasetDict:
    return DatasetDict(train=make_image_dataset(32, seed=0), test=make_image_dataset(12, seed=1))


# The smallest settings that still exercise every part of the pipeline: all three losses, checkpoints, resume.
TINY_OPTIONS = dict(
    method="gradient-matching",
    publish_authorized=True,  # public weights in the release, as the suites that read them expect
    authorized="resnet18-w4-seed0",
    encoder="surrogate",
    undistill_hacker="lenet-w2-seed1",
    generator_epochs=2,
    batch_size=8,
    generator_channels=4,
    generator_blocks=1,
    surrogate_epochs=1,
    recipe={"epochs": 2, "batch_size": 8},
    checkpoint_every=3,
)


def _shared_release(tmp_path_factory, name: str, options: dict) -> Path:
    """A tiny release of the standard tiny source (32 train rows, 12 test rows) made once per session."""
    import uge_hf

    source = DatasetDict(train=make_image_dataset(32, seed=0), test=make_image_dataset(12, seed=1))
    output = tmp_path_factory.mktemp(name) / name
    uge_hf.protect(source, output_dir=output, **options)
    return output


@pytest.fixture(scope="session")
def tiny_release(tmp_path_factory) -> Path:
    """One tiny release made with TINY_OPTIONS, shared by the tests that only read it."""
    return _shared_release(tmp_path_factory, "cifar-uge", TINY_OPTIONS)


@pytest.fixture
def release_copy(tiny_release, tmp_path) -> Path:
    """A private copy of the shared release, free to tamper with."""
    return Path(shutil.copytree(tiny_release, tmp_path / "cifar-uge"))


KEYED_OPTIONS = dict(authorized="resnet18-w4-seed0", method="keyed", keyed={"tile": 4, "groups": 6, "grain": 2},
                     recipe={"epochs": 2, "batch_size": 8})


LOCK_OPTIONS = dict(authorized="resnet18-w4-seed0", method="lock", recipe={"epochs": 2, "batch_size": 8})


@pytest.fixture(scope="session")
def lock_release(tmp_path_factory) -> Path:
    """One tiny lock release (and its OUTPUT.private folder with key.json), shared by the tests that only read it."""
    return _shared_release(tmp_path_factory, "cifar-lock", LOCK_OPTIONS)


@pytest.fixture(scope="session")
def keyed_release(tmp_path_factory) -> Path:
    """One tiny keyed release (and its OUTPUT.private folder beside it), shared by the tests that only read it."""
    return _shared_release(tmp_path_factory, "cifar-keyed", KEYED_OPTIONS)
