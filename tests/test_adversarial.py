"""The lock method's surrogate-based poisons (uge_hf.adversarial): bound, effect on the surrogate, exact unlock."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datasets import load_dataset

import uge_hf
from uge_hf.adversarial import BATCH_ROWS, targeted_adversarial, train_surrogate
from uge_hf.card import read_uge_block
from uge_hf.config import Recipe
from uge_hf.errors import UgeError
from uge_hf.poisons import apply_poison, poison
from uge_hf.training import predict_logits

from .conftest import LOCK_OPTIONS
from .test_lock import private_of, released_pixels, source_splits, source_tensors

RECIPE = Recipe(epochs=10, batch_size=8)  # a surrogate that has learnt its 32 rows (a flat one has no gradient to follow)


@pytest.fixture(scope="module")
def surrogate():
    tensors = source_tensors()
    return train_surrogate("cnn-w4-seed3", tensors.images, tensors.labels, 4, RECIPE), tensors


def test_the_perturbation_stays_in_the_bound_and_moves_the_surrogate_towards_the_next_class(surrogate):
    model, tensors = surrogate
    images, labels = tensors.images, tensors.labels
    delta = targeted_adversarial(model, images, labels, 4, 10, bytes(32), 0, steps=10)
    assert delta.dtype == torch.int16 and delta.abs().max() <= 10
    assert torch.equal(apply_poison(images, delta).to(torch.int16) - images.to(torch.int16), delta)  # nothing clipped
    target = (labels + 1) % 4
    before = predict_logits(model, images).log_softmax(1).gather(1, target[:, None]).mean()
    after = predict_logits(model, apply_poison(images, delta)).log_softmax(1).gather(1, target[:, None]).mean()
    assert after > before + 0.5  # the target class became far more likely


def test_the_bytes_depend_on_the_key_and_rows_not_on_how_a_split_is_cut(surrogate):
    model, _ = surrogate
    images = torch.randint(0, 256, (BATCH_ROWS + 20, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(len(images)) % 4
    whole = targeted_adversarial(model, images, labels, 4, 10, bytes(32), 0, steps=3)
    parts = torch.cat([targeted_adversarial(model, images[:BATCH_ROWS], labels[:BATCH_ROWS], 4, 10, bytes(32), 0, steps=3),
                       targeted_adversarial(model, images[BATCH_ROWS:], labels[BATCH_ROWS:], 4, 10, bytes(32), BATCH_ROWS, steps=3)])
    assert torch.equal(whole, parts)
    assert not torch.equal(whole, targeted_adversarial(model, images, labels, 4, 10, bytes([7] * 32), 0, steps=3))


def test_a_surrogate_poisoned_lock_release_unlocks_bit_for_bit(tmp_path):
    kind = "adversarial"
    options = {**LOCK_OPTIONS, "lock": {"poison": kind, "surrogate": "cnn-w4-seed3", "adversarial_steps": 3}}
    out = tmp_path / "locked"
    uge_hf.protect(source_splits(), output_dir=out, **options)
    block = read_uge_block(out)
    assert block["lock"]["poison"] == kind and block["lock"]["surrogate"] == "cnn-w4-seed3"
    assert block["lock"]["adversarial_steps"] == 3
    source = source_tensors().images.permute(0, 2, 3, 1).numpy()
    released = released_pixels(out)
    assert 0 < np.abs(released.astype(int) - source.astype(int)).max() <= 10
    unlocked = uge_hf.unlock(out, key=private_of(out))["train"]
    assert np.array_equal(np.stack([np.asarray(im.convert("RGB")) for im in unlocked["picture"]]), source)
    again = tmp_path / "again"  # the same key and source: the same bytes (a surrogate trained the same way on CPU)
    uge_hf.protect(source_splits(), output_dir=again, key_file=str(private_of(out)), **options)
    assert np.array_equal(released_pixels(again), released)
    assert load_dataset(str(again), split="train")["unlock"] == load_dataset(str(out), split="train")["unlock"]


def test_surrogate_settings_are_checked_before_any_work(tmp_path):
    with pytest.raises(UgeError, match="invalid model spec"):
        uge_hf.protect(source_splits(), output_dir=tmp_path / "a", **{**LOCK_OPTIONS, "lock": {"poison": "adversarial", "surrogate": "nonet"}})
    with pytest.raises(UgeError, match="adversarial_steps must be an integer >= 1"):
        uge_hf.protect(source_splits(), output_dir=tmp_path / "b", **{**LOCK_OPTIONS, "lock": {"adversarial_steps": 0}})
    with pytest.raises(UgeError, match="trains a surrogate on the whole split first"):
        uge_hf.protect(source_splits(), output_dir=tmp_path / "c", shard_rows=16,
                       **{**LOCK_OPTIONS, "lock": {"poison": "adversarial"}})
    with pytest.raises(UgeError, match="is not model-free"):
        poison("adversarial", bytes(32), torch.zeros(2, dtype=torch.long), 4, (3, 8, 8), 10)
    assert not any((tmp_path / name).exists() for name in "abc")
