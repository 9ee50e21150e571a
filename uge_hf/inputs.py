"""The fixed input transform of every classifier: uint8 pixels -> [0, 1] -> (x - 0.5) / 0.25.

Constants rather than dataset statistics, so the authorized recipe is the same for every dataset and needs no extra
numbers; the card records them (`uge.input`). A module of its own, without torch, so that the readers of a release
(`authorized`, the card) share it with the trainer without importing the trainer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

INPUT_MEAN = 0.5
INPUT_STD = 0.25


def normalize(images: Tensor) -> Tensor:
    """[0, 1] float images (any shape) -> classifier inputs, same shape."""
    return (images - INPUT_MEAN) / INPUT_STD


def to_unit(images: Tensor) -> Tensor:
    """uint8 images -> float [0, 1], same shape."""
    return images.float().div_(255)
