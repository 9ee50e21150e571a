"""uge_hf.validate: every split a release will hold, checked before any training (issue 12)."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
from PIL import Image as PILImage

from uge_hf import validate
from uge_hf.config import ProtectConfig
from uge_hf.errors import UgeError
from uge_hf.validate import validate_splits

CLASSES = datasets.ClassLabel(names=["cat", "dog"])


def split(labels: list, size: int = 16, feature=CLASSES, images: list | None = None) -> datasets.Dataset:
    rng = np.random.default_rng(len(labels))
    images = images or [PILImage.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in labels]
    features = datasets.Features({"img": datasets.Image(), "label": feature})
    return datasets.Dataset.from_dict({"img": images, "label": labels}, features=features)


def check(data: dict, **config) -> tuple[list[str], tuple[int, int]]:
    return validate_splits(datasets.DatasetDict(data), ProtectConfig(**config), "img", "label")


def test_a_good_dataset_gives_class_names_and_size():
    assert check({"train": split([0, 1, 0]), "test": split([1, 0], size=20)}) == (["cat", "dog"], (16, 16))
    assert check({"train": split([0, 1])}, image_size=32)[1] == (32, 32)


def test_an_unlabelled_split_that_is_only_copied_is_legal():
    assert check({"train": split([0, 1]), "test": split([-1, -1, -1])})[0] == ["cat", "dog"]
    strings = datasets.Value("string")
    assert check({"train": split(["a", "b"], feature=strings), "test": split([None, "a"], feature=strings)})[0] == ["a", "b"]


def test_a_protected_split_needs_every_label():
    with pytest.raises(UgeError, match="split 'test', row 1, column 'label': no label; a protected split"):
        check({"train": split([0, 1]), "test": split([0, -1])}, splits=["train", "test"])
    with pytest.raises(UgeError, match="split 'train': row 2 of column 'label' has no label"):
        check({"train": split([0, 1, -1])})


def test_a_label_outside_the_training_classes_names_split_row_and_column():
    strings = datasets.Value("string")
    with pytest.raises(UgeError, match="split 'test', row 2, column 'label': label 'zebra' is not one of the 2 classes of split 'train'"):
        check({"train": split(["a", "b"], feature=strings), "test": split(["a", "b", "zebra"], feature=strings)})
    ints = datasets.Value("int64")
    with pytest.raises(UgeError, match="split 'test', row 0, column 'label': label 7"):
        check({"train": split([3, 5], feature=ints), "test": split([7], feature=ints)})


def test_an_undecodable_image_in_a_copied_split_names_split_row_and_column():
    broken = split([0, 1], images=[PILImage.new("RGB", (16, 16)), {"bytes": b"not an image", "path": None}])
    with pytest.raises(UgeError, match="split 'test', row 1, column 'img': could not decode the image: not an image format"):
        check({"train": split([0, 1]), "test": broken})
    check({"train": split([0, 1]), "test": broken}, keep_other_splits=False)  # a dropped split is not read


def test_splits_must_share_one_schema():
    other = split([0, 1], feature=datasets.ClassLabel(names=["cat", "dog", "frog"]))
    with pytest.raises(UgeError, match="split 'test' has the features .* split 'train' has .*keep_other_splits=false"):
        check({"train": split([0, 1]), "test": other})
    with pytest.raises(UgeError, match="split 'test' has the features"):
        check({"train": split([0, 1]), "test": split([0, 1]).remove_columns("label")})


def test_sizes_rows_and_memory():
    with pytest.raises(UgeError, match="are 8x8 px: the networks need at least 16 px per side; pass --image-size 16"):
        check({"train": split([0, 1], size=8)})
    assert check({"train": split([0, 1], size=8)}, image_size=16)[1] == (16, 16)
    with pytest.raises(UgeError, match="split 'test' is empty"):
        check({"train": split([0, 1]), "test": split([0]).select([])}, splits=["train", "test"])
    with pytest.raises(UgeError, match="split 'train': column 'label' has 1 class"):
        check({"train": split([1, 1, 1])})


def test_more_processes_than_rows(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(UgeError, match="2 row\\(s\\), fewer than the 3 processes"):
        check({"train": split([0, 1])})


def test_images_too_large_for_this_machine(monkeypatch):
    monkeypatch.setattr(validate, "physical_memory", lambda: 2**16)
    with pytest.raises(UgeError, match="2 images at 64x64 px need about 0.2 MiB of memory to protect, more than this machine's 0.1 MiB: pass --image-size"):
        check({"train": split([0, 1])}, image_size=64)


def test_a_split_named_twice_is_protected_once():
    assert ProtectConfig(splits=["train", "test", "train"]).splits == ["train", "test"]
    assert check({"train": split([0, 1]), "test": split([1])}, splits=["train", "train"])[0] == ["cat", "dog"]
