"""Availability poisons for the lock method: integer perturbations delta, |delta| <= bound levels, from a key.

The lock method releases x_u = clip(x + delta, 0, 255) and lets the key holder undo it exactly (`uge_hf.lock`), so
delta need not be invertible or leak-free: it only has to teach every other network a shortcut instead of the
content (an availability attack). Every poison here is *model-free*: a pure function of the key, the labels and
the row indices (no surrogate network), so protecting is one pass over the images.

- `texture`: a class texture of `grain` x `grain` cells tiled with period `tile`, a +-1 code per cell and channel,
  times one sign per image (so a class's mean perturbation is ~0 and a linear classifier finds little): the keyed
  method's shortcut (benchmarks/results/keyed_sweep.md), here at the full bound and free to clip.
- `texture-grey-apart` (the default): `texture` with class codes chosen so that their grey (luminance) versions are
  also far apart up to sign (`luminance_separated_texture`), for hackers who train on grayscale copies.
- `texture-luma`: 4 x 4 cells with period 16, the same sign on R, G and B (16 code bits per class): a grey texture
  that grayscale keeps and that JPEG's luminance channel keeps better than colour (chroma is subsampled and
  quantised hardest).
- `blocks`: 8 x 8 cells over a 32-pixel tile, the same sign on R, G and B: every 8 x 8 block's
  luminance moves by exactly +-bound. At the bound of 10 levels that is one quantisation step of JPEG's DC
  coefficient at quality 10 (8 * 10 = 80 = 16 * 5), which JPEG then keeps instead of averaging away.
  `blocks-colour`: the same cells with a sign per channel.
- `autoregressive`: a stable causal AR process per class over a 3 x 3 window and the three channels, started from
  per-image noise (Sandoval-Segura et al., "Autoregressive Perturbations for Data Poisoning", NeurIPS 2022); scaled
  per image to the bound (their L2 scaling replaced by the L-inf bound used here).
- `texture+blocks`, `texture+autoregressive`: half the bound each (a sum, so the bound holds).

All randomness comes from the key: class codes and AR coefficients from `key_rng(secret, ...)`, per-image signs and
AR seeds from SHAKE-256 of the key and the row index (independent of batching and sharding).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch import Tensor

from .config import MODEL_FREE_POISONS, POISONS
from .errors import UgeError
from .key import separated_codes

AR_BURN_IN = 8  # pixels of the AR canvas cut off before the image starts (the start-up transient)


def key_rng(secret: bytes, *words: int) -> np.random.Generator:
    """A numpy generator seeded by the whole 256-bit key (not a 32-bit seed) and `words`."""
    return np.random.default_rng([*np.frombuffer(secret, dtype=np.uint32).tolist(), *words])


def row_words(secret: bytes, label: bytes, first_row: int, count: int, size: int) -> np.ndarray:
    """`size` uint8 of SHAKE-256(secret, label, row) for each row: (count, size), a function of the key and row alone."""
    out = np.empty((count, size), dtype=np.uint8)
    for offset, row in enumerate(range(first_row, first_row + count)):
        out[offset] = np.frombuffer(hashlib.shake_256(secret + label + row.to_bytes(8, "little")).digest(size), dtype=np.uint8)
    return out


def image_signs(secret: bytes, first_row: int, count: int) -> Tensor:
    """One sign in {-1, +1} per row: (count,) int16."""
    bits = row_words(secret, b"lock/image-sign", first_row, count, 1)[:, 0] & 1
    return torch.from_numpy(1 - 2 * bits.astype(np.int16))


def cell_texture(secret: bytes, num_classes: int, shape: tuple[int, int, int], tile: int, grain: int, luminance: bool,
                 stream: int) -> Tensor:
    """Per class, a +-1 pattern of `grain`-pixel cells with period `tile`: (num_classes, C, H, W) int16.

    The classes' codes are far apart and distinct up to sign (`uge_hf.key.separated_codes`): with independent random
    codes two classes can nearly share a texture up to the image's sign, and the shortcut blurs (validation slice:
    ResNet-18 34.3 with independent codes, see benchmarks/results/lock_sweep.md).

    `luminance` gives R, G and B the same sign (a grey pattern); otherwise each channel has its own.
    """
    if tile % grain:
        raise UgeError(f"the grain ({grain}) must divide the tile ({tile})")
    channels, height, width = shape
    side = tile // grain
    planes = 1 if luminance else channels
    codes = separated_codes(key_rng(secret, 2, stream), num_classes, planes * side * side)
    codes = codes.reshape(num_classes, planes, side, side).astype(np.int16)
    cells = torch.from_numpy(codes).repeat_interleave(grain, 2).repeat_interleave(grain, 3).expand(-1, channels, -1, -1)
    reps = (-(-height // tile), -(-width // tile))
    return cells.repeat(1, 1, *reps)[:, :, :height, :width].contiguous()


LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601, as `uge_hf.attacks.grayscale` converts


def luminance_separated_texture(secret: bytes, num_classes: int, shape: tuple[int, int, int], tile: int, grain: int,
                                stream: int, draws: int | None = None) -> Tensor:
    """`cell_texture` (colour) whose classes also stay apart in luminance, up to sign: (num_classes, C, H, W) int16.

    Of `draws` code sets (each `separated_codes`), the one whose closest two classes' luminance maps (codes weighted
    by LUMA per cell) are farthest apart, up to the image's sign: a grayscale copy of the release keeps a class
    signal instead of collapsing colour codes onto few grey ones.
    """
    channels, height, width = shape
    side = tile // grain
    rng = key_rng(secret, 2, stream)
    if draws is None:  # each draw compares every pair of classes: fewer draws for many classes (1 from 1,024)
        draws = max(1, min(256, 256 * 64**2 // num_classes**2))
    best, best_gap = None, -1.0
    for _ in range(draws):
        codes = separated_codes(rng, num_classes, channels * side * side).reshape(num_classes, channels, side, side)
        luma = np.tensordot(LUMA[:channels], codes, axes=([0], [1])).reshape(num_classes, -1) if channels == 3 else \
            codes.reshape(num_classes, -1).astype(float)
        gaps = np.minimum(np.linalg.norm(luma[:, None] - luma[None], axis=-1), np.linalg.norm(luma[:, None] + luma[None], axis=-1))
        gap = (gaps + np.eye(num_classes) * 1e9).min()
        if gap > best_gap:
            best, best_gap = codes, gap
    cells = torch.from_numpy(best.astype(np.int16)).repeat_interleave(grain, 2).repeat_interleave(grain, 3)
    reps = (-(-height // tile), -(-width // tile))
    return cells.repeat(1, 1, *reps)[:, :, :height, :width].contiguous()


def ar_coefficients(secret: bytes, num_classes: int, channels: int) -> Tensor:
    """Per class and output channel, causal AR weights over a 3 x 3 window of every channel: (K, C, C, 3, 3) float64.

    The bottom-right tap (the pixel being generated) is 0; the taps' absolute values sum to 1, so the process is
    stable (each value is a convex-like combination of earlier ones, with random signs).
    """
    rng = key_rng(secret, 3)
    weights = rng.normal(size=(num_classes, channels, channels, 3, 3))
    weights[..., 2, 2] = 0
    weights /= np.abs(weights).sum(axis=(2, 3, 4), keepdims=True)
    return torch.from_numpy(weights)


def autoregressive(secret: bytes, labels: Tensor, shape: tuple[int, int, int], first_row: int) -> Tensor:
    """AR perturbations (Sandoval-Segura et al., NeurIPS 2022), one per row: (N, C, H, W) float64 in [-1, 1].

    x[i, j] = sum of the class's taps times earlier values + e[i, j], with white Gaussian innovations e (one stream
    per row of the dataset), run over a canvas `AR_BURN_IN` pixels larger than the image; the image gets its last H x W pixels
    (past the start-up transient), scaled so that its 99th percentile of |value| is 1, then clipped to [-1, 1].
    """
    channels, height, width = shape
    count = len(labels)
    weights = ar_coefficients(secret, int(labels.max()) + 1 if count else 1, channels)[labels]  # (N, C, C, 3, 3)
    seeds = row_words(secret, b"lock/ar-seed", first_row, count, 8).view(np.uint64)[:, 0]
    rows, cols = height + AR_BURN_IN, width + AR_BURN_IN
    grid = torch.zeros(count, channels, rows, cols, dtype=torch.float64)
    for offset, seed in enumerate(seeds):  # the innovations: white noise, one stream per row
        grid[offset] = torch.from_numpy(np.random.default_rng(int(seed)).normal(size=(channels, rows, cols)))
    flat = weights.reshape(count, channels, -1)
    for i in range(2, rows):
        for j in range(2, cols):
            window = grid[:, :, i - 2 : i + 1, j - 2 : j + 1].reshape(count, 1, -1)  # its own tap is 0
            grid[:, :, i, j] += (flat * window).sum(-1)
    out = grid[:, :, -height:, -width:]
    scale = out.abs().reshape(count, -1).quantile(0.99, dim=1).clamp(min=1e-12).view(-1, 1, 1, 1)
    return (out / scale).clamp(-1, 1)


def poison(kind: str, secret: bytes, labels: Tensor, num_classes: int, shape: tuple[int, int, int], bound: int,
           first_row: int = 0) -> Tensor:
    """delta for rows first_row .. first_row + N - 1: (N, C, H, W) int16 with |delta| <= bound levels.

    Args:
        kind: one of MODEL_FREE_POISONS (module docstring; the surrogate-based ones are in `uge_hf.adversarial`).
        secret: the 256-bit key.
        labels: int64 (N,) class indices.
        num_classes: classes of the dataset (the class codes depend on it, not on which classes a chunk holds).
        shape: (C, H, W) of the images.
        bound: the L-inf bound in 8-bit levels, floor(rho * 255).
        first_row: index of the first row in its split (per-row randomness depends on the row, not the chunk).
    """
    if kind not in MODEL_FREE_POISONS:
        raise UgeError(f"poison {kind!r} is not model-free: use uge_hf.adversarial" if kind in POISONS else
                       f"unknown poison {kind!r}: use one of {', '.join(MODEL_FREE_POISONS)}")
    signs = image_signs(secret, first_row, len(labels)).view(-1, 1, 1, 1)
    if kind == "texture":
        return bound * cell_texture(secret, num_classes, shape, 8, 4, False, 0)[labels] * signs
    if kind == "texture-grey-apart":
        return bound * luminance_separated_texture(secret, num_classes, shape, 8, 4, 4)[labels] * signs
    if kind == "texture-luma":
        return bound * cell_texture(secret, num_classes, shape, 16, 4, True, 3)[labels] * signs
    if kind in ("blocks", "blocks-colour"):
        return bound * cell_texture(secret, num_classes, shape, 32, 8, kind == "blocks", 1)[labels] * signs
    if kind == "texture+blocks":
        half = bound // 2
        return (half * cell_texture(secret, num_classes, shape, 8, 4, False, 0)[labels]
                + (bound - half) * cell_texture(secret, num_classes, shape, 32, 8, True, 1)[labels]) * signs
    if kind == "texture+autoregressive":
        half = bound // 2
        return (half * cell_texture(secret, num_classes, shape, 8, 4, False, 0)[labels] * signs
                + ((bound - half) * autoregressive(secret, labels, shape, first_row)).round().to(torch.int16))
    return (bound * autoregressive(secret, labels, shape, first_row)).round().to(torch.int16)


def apply_poison(images: Tensor, delta: Tensor) -> Tensor:
    """x_u = clip(x + delta, 0, 255): uint8 (N, C, H, W) from uint8 images and int16 delta of the same shape."""
    return (images.to(torch.int16) + delta).clamp(0, 255).to(torch.uint8)
