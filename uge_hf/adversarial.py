"""Class-targeted adversarial poisons for the lock method (Fowl et al., "Adversarial Examples Make Strong Poisons",
NeurIPS 2021): the surrogate-based poisons of `uge_hf.config.SURROGATE_POISONS`.

A surrogate network is trained on the clean rows with the release's recipe; each row then gets the perturbation
that makes the surrogate call it class (y + 1) mod K, found by signed-gradient steps through the recipe's random
crop and flip (an expectation over the augmentation, which carries the perturbation to networks the surrogate is
not). Networks trained on the release learn those non-robust features of the *wrong* class instead of the content.
On the validation slice it measured as strong as the model-free texture for the CNN and ResNet-18, and it is the
only poison measured here that JPEG-10 did not undo (`benchmarks/results/lock_sweep.md`). The cost: training the
surrogate (a full run of the recipe) and `steps` forward/backward passes per row, against one pass for a
model-free poison.

Tried and dropped: the model-free texture at half the bound with the adversarial steps in the other half (weaker
than either alone on the validation slice: CNN 0.53x).
"""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import Recipe
from .inputs import normalize
from .specs import build_model
from .training import random_crop_flip, train_classifier

STEP_LEVELS = 1.5  # signed-gradient step, in 8-bit levels (20 steps cross the 10-level bound three times)
BATCH_ROWS = 256  # rows per batch of steps; batches start at multiples of it, so chunking does not change the bytes


def train_surrogate(spec: str, images: Tensor, labels: Tensor, num_classes: int, recipe: Recipe,
                    device: torch.device | str = "cpu") -> nn.Module:
    """The surrogate `spec` (e.g. "resnet18-w16-seed7") trained with `recipe` on uint8 (N, C, H, W) clean images."""
    model = build_model(spec, num_classes)
    train_classifier(model, images, labels, recipe, device, description=f"surrogate {spec}")
    return model.eval()


def targeted_adversarial(surrogate: nn.Module, images: Tensor, labels: Tensor, num_classes: int, bound: int,
                         secret: bytes, first_row: int, steps: int = 20, device: torch.device | str = "cpu") -> Tensor:
    """delta that makes `surrogate` predict (y + 1) mod K on x + delta: (N, C, H, W) int16, |delta| <= bound levels.

    Args:
        images: uint8 (N, C, H, W) clean images; labels: int64 (N,) class indices. x + delta stays within 0..255
            (nothing is clipped afterwards).
        secret, first_row: seed the augmentation draws per batch of `BATCH_ROWS` rows from the key and the batch's
            first row: the same rows and key give the same bytes (on the same device and torch) when `first_row` is
            a multiple of `BATCH_ROWS`, however a split is cut into calls.
    """
    surrogate = surrogate.to(device).eval()
    out = torch.empty(images.shape, dtype=torch.int16)
    for start in range(0, len(images), BATCH_ROWS):
        rows = slice(start, start + BATCH_ROWS)
        seed = hashlib.shake_256(secret + b"lock/adversarial" + (first_row + start).to_bytes(8, "little")).digest(8)
        generator = torch.Generator().manual_seed(int.from_bytes(seed, "little") >> 1)
        x = images[rows].to(device).float()  # levels
        low, high = (-x).clamp(min=-bound), (255 - x).clamp(max=bound)  # integers: the bound and 0..255 hold
        target = (labels[rows].to(device) + 1) % num_classes
        d = torch.zeros_like(x)
        for _ in range(steps):
            d.requires_grad_(True)
            (view,) = random_crop_flip([(x + d) / 255], generator)
            (grad,) = torch.autograd.grad(F.cross_entropy(surrogate(normalize(view)), target), d)
            with torch.no_grad():
                d = torch.minimum(torch.maximum(d - STEP_LEVELS * grad.sign(), low), high)
        out[rows] = d.detach().round().to(torch.int16).cpu()
    return out
