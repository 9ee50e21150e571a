"""The one supervised training loop: the protector's trajectory, the surrogate encoder and evaluation all use it.

Images travel as uint8 tensors and are turned into network inputs by `normalize`, the fixed input transform
the card records, so an authorized user reproduces the protector's inputs exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import Recipe
from .errors import UgeError
from .inputs import INPUT_MEAN, INPUT_STD, normalize, to_unit  # noqa: F401 (the trainer's inputs, re-exported)
from .progress import progress_bar

def random_crop_flip(images: list[Tensor], generator: torch.Generator) -> list[Tensor]:
    """The recipe's augmentation: pad 1/8 of the side with zeros, crop back at random, flip half horizontally.

    Every tensor in `images` (same shape) gets the same crop and flip per sample, so a clean batch and its
    protected twin stay aligned. Random numbers come from a CPU generator: results do not depend on the device.
    Differentiable (pure indexing).
    """
    batch, _, height, width = images[0].shape
    pad_h, pad_w = max(1, height // 8), max(1, width // 8)
    top = torch.randint(0, 2 * pad_h + 1, (batch,), generator=generator)
    left = torch.randint(0, 2 * pad_w + 1, (batch,), generator=generator)
    flip = torch.rand(batch, generator=generator) < 0.5
    device = images[0].device
    rows = (top[:, None] + torch.arange(height)[None]).to(device)
    cols = left[:, None] + torch.arange(width)[None]
    cols = torch.where(flip[:, None], cols.flip(1), cols).to(device)
    sample = torch.arange(batch, device=device)[:, None, None, None]
    channel = torch.arange(images[0].shape[1], device=device)[None, :, None, None]
    out = []
    for x in images:
        padded = F.pad(x, (pad_w, pad_w, pad_h, pad_h))
        out.append(padded[sample, channel, rows[:, None, :, None], cols[:, None, None, :]])
    return out


def epoch_permutation(num_samples: int, seed: int, epoch: int) -> Tensor:
    """The data order of one epoch: a pure function of (seed, epoch), so a resumed run sees the same order."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_samples, generator=generator)


def recipe_optimizer(model: nn.Module, recipe: Recipe, num_samples: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The recipe's SGD and its per-step learning-rate schedule over the whole run on `num_samples` rows."""
    optimizer = torch.optim.SGD(
        model.parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
    )
    if recipe.schedule == "cosine":
        return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=recipe.total_steps(num_samples))
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def augment(images: list[Tensor], recipe: Recipe, generator: torch.Generator) -> list[Tensor]:
    """The recipe's augmentation of a batch (and of its aligned twins), drawing from the recipe's generator."""
    return images if recipe.augmentation == "none" else random_crop_flip(images, generator)


def train_classifier(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    recipe: Recipe,
    device: torch.device | str = "cpu",
    on_epoch_end: Callable[[int, nn.Module], None] | None = None,
    description: str = "training",
    teacher: nn.Module | None = None,
    input_stage: nn.Module | None = None,
    teacher_stage: nn.Module | None = None,
) -> nn.Module:
    """Train `model` with `recipe` on uint8 `images` and `labels` (SGD, full batches except the last).

    `on_epoch_end(epoch, model)` is called after every epoch (1-based), e.g. to keep trajectory checkpoints.
    With a `teacher`, the loss is KL(teacher || model) on the same augmented batch instead of cross-entropy:
    knowledge distillation, the paper's Distill attack (Eq. 10); `labels` are then unused.
    `input_stage` (e.g. a keyed network's key stage) maps [0, 1] images (N, C, H, W) to images of the same shape
    and runs **before** the augmentation, on the whole image, as it does at test time (`predict_logits`);
    `teacher_stage` is the teacher's own input stage (a keyed teacher), its input augmented alike.
    Deterministic on CPU for a given recipe and model initialisation. A loss or, after an epoch, a weight that is not
    finite (NaN, inf: the recipe diverged) raises UgeError naming `description` and the epoch.
    """
    model.to(device).train()
    if teacher is not None:
        teacher.to(device).eval()
    optimizer, scheduler = recipe_optimizer(model, recipe, len(images))
    augment_rng = torch.Generator().manual_seed(recipe.seed)
    with progress_bar(description, total=recipe.total_steps(len(images))) as advance:
        for epoch in range(recipe.epochs):
            order = epoch_permutation(len(images), recipe.seed, epoch)
            for batch in order.split(recipe.batch_size):
                raw = images[batch].to(device)
                twins = [_staged(raw, input_stage)] + ([_staged(raw, teacher_stage)] if teacher_stage is not None else [])
                x, *teacher_x = augment(twins, recipe, augment_rng)  # one crop/flip per sample for both
                logits = model(normalize(x))
                if teacher is None:
                    loss = F.cross_entropy(logits, labels[batch].to(device))
                else:
                    with torch.no_grad():
                        target = F.log_softmax(teacher(normalize(teacher_x[0] if teacher_x else x)), dim=1)
                    loss = F.kl_div(F.log_softmax(logits, dim=1), target, log_target=True, reduction="batchmean")
                value = loss.item()
                if not math.isfinite(value):
                    raise _diverged(description, f"its loss is {value}", epoch, recipe)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                advance(loss=value)
            if not all(torch.isfinite(p).all() for p in model.parameters()):
                raise _diverged(description, "its weights are not finite", epoch, recipe)
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, model)
    return model


def _staged(images: Tensor, input_stage: nn.Module | None) -> Tensor:
    """uint8 images -> [0, 1] floats, through `input_stage` when there is one (no gradient: it is fixed).

    A stage with `from_levels` (the key stage) takes the uint8 levels themselves, for an exact result.
    """
    if input_stage is None:
        return to_unit(images)
    with torch.no_grad():
        input_stage = input_stage.to(images.device)
        if hasattr(input_stage, "from_levels"):
            return input_stage.from_levels(images)
        return input_stage(to_unit(images))


def _diverged(description: str, what: str, epoch: int, recipe: Recipe) -> UgeError:
    return UgeError(f"{description} diverged: {what} in epoch {epoch + 1}; nothing was written. Lower the recipe's"
                    f" learning rate (recipe.lr = {recipe.lr})")


@torch.no_grad()
def predict_logits(model: nn.Module, images: Tensor, device: torch.device | str = "cpu", batch_size: int = 512,
                   input_stage: nn.Module | None = None) -> Tensor:
    """Logits of `model` (eval mode) on uint8 `images` (through `input_stage` first, if given), on the CPU."""
    model.to(device).eval()
    outputs = [model(normalize(_staged(chunk.to(device), input_stage))).float().cpu() for chunk in images.split(batch_size)]
    return torch.cat(outputs)


def accuracy(model: nn.Module, images: Tensor, labels: Tensor, device: torch.device | str = "cpu",
             input_stage: nn.Module | None = None) -> float:
    """Top-1 accuracy in [0, 1]."""
    return (predict_logits(model, images, device, input_stage=input_stage).argmax(1) == labels).float().mean().item()
