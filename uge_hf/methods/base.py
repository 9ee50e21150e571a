"""What every method receives from the pipeline and gives back to it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets import DatasetDict
from torch import Tensor

from ..card import AuthorizedEntry
from ..config import ProtectConfig
from ..data import ClassificationTensors


@dataclass
class MethodInput:
    """The validated run: config, every split of the source, and the first protected split decoded."""

    config: ProtectConfig
    splits: DatasetDict  # the source's splits, as loaded
    fit: ClassificationTensors  # the first protected split: uint8 (N, 3, H, W) images at the training size, labels
    image_column: str
    label_column: str
    work_dir: Path | None = None  # where a method may cache expensive intermediates (resume after a kill)


@dataclass
class MethodResult:
    """Protected images of every protected split, and what the release and its private folder must hold."""

    protected: dict[str, Tensor]  # split -> uint8 (N, 3, H, W), row-aligned with the source split
    authorized: list[AuthorizedEntry]  # the card's `uge.authorized` entries, in the config's order
    # The method's own settings block(s) of the card (`UgeBlock.method_fields`, e.g. {"key": {...}}), and its own
    # measurements (`Results.method_results`): written in this order, read back as they are.
    card: dict[str, Any] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    public_files: dict[str, bytes] = field(default_factory=dict)  # release-relative path -> bytes
    private_files: dict[str, bytes] = field(default_factory=dict)  # private-folder-relative path -> bytes (key material)
    # split -> column -> one value per row, added to that protected split (the lock method's `unlock` blobs)
    columns: dict[str, dict[str, list]] = field(default_factory=dict)
    work_dir: Path | None = None  # the method's cache, removed once the release is written
    # config fields the method resolved at run time (gradient-matching: `mixed_precision` None -> Accelerate's
    # configured value): the card's `config` and uge_config.json record these, not the None that was given
    resolved: dict[str, Any] = field(default_factory=dict)
    barrier: Callable[[], None] = lambda: None  # waits for every process of a multi-process run


# Pixel values (rows x 3 x H x W) a per-row method processes at once: 2048 CIFAR-size rows. Bounded in values, not
# rows: the keyed projection's float64 temporaries for 2048 rows at 224x224 took 9.6 GiB (benchmarks/scale.py).
CHUNK_VALUES = 2048 * 3 * 32 * 32


def chunk_rows(image_size: tuple[int, int]) -> int:
    """Rows per chunk at `image_size` (H, W): as many as fit in `CHUNK_VALUES`, at least one. A per-row method's
    output does not depend on it (each row's perturbation is a function of its index), only its peak memory."""
    height, width = image_size
    return max(1, CHUNK_VALUES // (3 * height * width))
