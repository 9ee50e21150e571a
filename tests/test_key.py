"""The key stage and the keyed perturbation (uge_hf.key): exactness, the bound, determinism, secrecy of the draw."""

from __future__ import annotations

import pytest
import torch

from uge_hf.errors import UgeError
from uge_hf.key import KEY_BYTES, KeyGeometry, SecretKey, new_secret, protect_keyed

BOUND = 10


def make_key(secret: bytes = bytes(range(32)), tile: int = 4, groups: int = 6, num_classes: int = 4) -> SecretKey:
    return SecretKey(secret, KeyGeometry(3, tile, groups), num_classes)


def images(n: int = 16, size: int = 16, low: int = 0, high: int = 256, seed: int = 0) -> torch.Tensor:
    return torch.randint(low, high, (n, 3, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_key_stage_is_an_orthogonal_projection_that_removes_its_subspace():
    stage = make_key().stage()
    x = torch.rand(3, 3, 18, 18, dtype=torch.float64)  # 18 = 4 full tiles + a 2-pixel border
    kx = stage(x)
    assert torch.allclose(stage(kx), kx, atol=1e-12)  # idempotent
    assert torch.equal(kx[..., 16:, :], x[..., 16:, :]) and torch.equal(kx[..., :, 16:], x[..., :, 16:])  # border untouched
    residual = x - kx  # U U^T x: in S, orthogonal to K(x)
    assert torch.allclose(stage(residual), torch.zeros_like(x), atol=1e-12)
    assert abs((residual * kx).sum().item()) < 1e-9
    removed = stage.basis.shape[0] * (16 // 4) ** 2
    assert removed == 6 * 16  # groups per region x regions


@pytest.mark.parametrize("signs", ["random", "image", "fixed"])
@pytest.mark.parametrize("pull", [0, 5])
def test_perturbation_is_exactly_in_s_and_within_the_bound(signs, pull):
    key = make_key()
    source = images()
    labels = torch.arange(16) % 4
    out = protect_keyed(source, labels, key, BOUND, signs=signs, pull=pull)
    diff = out.images.int() - source.int()
    assert out.images.dtype == torch.uint8 and diff.abs().max() <= BOUND
    adjusted = source.int().clamp(pull, 255 - pull)  # T(x); the identity at pull 0
    stage = key.stage()
    assert torch.allclose(stage(out.images.double()), stage(adjusted.double()), atol=1e-9)
    assert out.invariance_levels.max() < 1e-9
    assert out.mean_amplitude > 5  # most groups carry the whole bound


def test_saturated_images_never_clip_and_carry_a_signal_where_they_can():
    key = SecretKey(bytes(range(32)), KeyGeometry(3, 8, 12, 4), 4)  # the default: each group a 4x4 cell of one sign
    black_white = torch.cat([torch.zeros(2, 3, 16, 16, dtype=torch.uint8), torch.full((2, 3, 16, 16), 255, dtype=torch.uint8)])
    labels = torch.tensor([0, 1, 2, 3])
    stage = key.stage()
    # pull 0: K(x_u) = K(x); a cell can only move away from 0 (or 255): it carries the bound or, where its sign
    # points the other way, nothing
    out = protect_keyed(black_white, labels, key, BOUND)
    change = (out.images.int() - black_white.int()).abs()
    assert set(change.unique().tolist()) <= {0, BOUND} and change.float().mean() > 2
    assert torch.allclose(stage(out.images.double()), stage(black_white.double()), atol=1e-9)
    # pull 5: T moves them inward by 5, then every group carries +-5 levels
    out = protect_keyed(black_white, labels, key, BOUND, pull=5)
    adjusted = black_white.int().clamp(5, 250)
    assert torch.equal((out.images.int() - adjusted).abs(), torch.full_like(adjusted, 5))
    assert torch.allclose(stage(out.images.double()), stage(adjusted.double()), atol=1e-9)


def test_deterministic_per_row_whatever_the_batching_and_key_dependent():
    key = make_key()
    source, labels = images(12), torch.arange(12) % 4
    whole = protect_keyed(source, labels, key, BOUND).images
    parts = torch.cat([protect_keyed(source[i : i + 5], labels[i : i + 5], key, BOUND, first_row=i).images for i in range(0, 12, 5)])
    assert torch.equal(whole, parts)
    other = protect_keyed(source, labels, make_key(bytes(31) + b"\x01"), BOUND).images
    assert not torch.equal(whole, other)


def test_random_signs_leave_no_class_mean_for_a_linear_attack():
    key = make_key(tile=4, groups=6, num_classes=2)
    source = torch.full((400, 3, 16, 16), 128, dtype=torch.uint8)
    labels = torch.arange(400) % 2
    for signs, expect_mean in (("fixed", True), ("random", False)):
        delta = protect_keyed(source, labels, key, BOUND, signs=signs).images.float() - 128
        class_mean = delta[labels == 0].mean(0).abs().mean().item()
        assert (class_mean > 5) == expect_mean, (signs, class_mean)


def test_class_codes_differ_between_classes_and_keys_are_full_entropy():
    codes = make_key(num_classes=10, groups=10).class_codes()
    assert len({tuple(c.tolist()) for c in codes}) == 10
    first, second = new_secret(), new_secret()
    assert len(first) == KEY_BYTES == 32 and first != second
    with pytest.raises(UgeError, match="32 bytes"):
        SecretKey(b"short", KeyGeometry(3, 4, 6), 4)


def test_bad_inputs_are_user_errors():
    key = make_key()
    with pytest.raises(UgeError, match="uint8"):
        protect_keyed(torch.zeros(2, 3, 16, 16), torch.zeros(2, dtype=torch.long), key, BOUND)
    with pytest.raises(UgeError, match="smaller than the key"):
        protect_keyed(torch.zeros(2, 3, 2, 2, dtype=torch.uint8), torch.zeros(2, dtype=torch.long), key, BOUND)
    with pytest.raises(UgeError, match="pull"):
        protect_keyed(images(2), torch.zeros(2, dtype=torch.long), key, BOUND, pull=11)


def test_the_invariance_check_catches_a_clipped_or_edited_pixel():
    from uge_hf.key import invariance_residual

    key = make_key()
    source, labels = images(4), torch.arange(4)
    out = protect_keyed(source, labels, key, BOUND)
    adjusted = source.int()  # T(x) = x at the default pull 0
    stage = key.stage()
    assert invariance_residual(stage, out.images, adjusted).max() < 1e-9
    leaked = out.images.clone()
    leaked[1, 0, 3, 3] = (int(leaked[1, 0, 3, 3]) + 1) % 256  # one level off S, as a clipped pixel would be
    residual = invariance_residual(stage, leaked, adjusted)
    assert residual[1] > 0.5 and residual[[0, 2, 3]].max() < 1e-9
    bordered = images(2, size=18)  # an 18-pixel image: a 2-pixel border outside the tiles, which K leaves alone
    out = protect_keyed(bordered, labels[:2], key, BOUND)
    assert invariance_residual(stage, out.images, bordered.int()).max() < 1e-9
    edited = out.images.clone()
    edited[0, 2, 17, 17] ^= 1
    assert invariance_residual(stage, edited, bordered.int())[0] == 1


def test_class_codes_are_distinct_for_many_classes():
    codes = SecretKey(bytes(range(32)), KeyGeometry(3, 8, 12, 4), 1000).class_codes()
    assert codes.shape == (1000, 12) and len({tuple(c.tolist()) for c in codes}) == 1000
    assert set(codes.unique().tolist()) == {-1, 1}


def test_no_two_classes_share_a_texture_up_to_the_random_sign():
    codes = SecretKey(bytes(range(32)), KeyGeometry(3, 8, 12, 4), 1000).class_codes()
    as_sets = {tuple(c.tolist()) for c in codes} | {tuple((-c).tolist()) for c in codes}
    assert len(as_sets) == 2000  # no code is another's negation
