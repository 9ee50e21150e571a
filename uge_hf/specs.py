"""Authorized-model specs: a short string that pins an architecture, a width and an initialisation seed.

The spec is what a data owner publishes next to protected data; ``build_model`` turns it into exactly the
same initial weights on any machine, and ``init_sha256`` fingerprints those weights.
"""

import hashlib
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from uge_hf.errors import UgeError
from uge_hf.models import ARCHITECTURES

_GRAMMAR = "ARCH[-wWIDTH]-seedSEED, e.g. resnet18-seed0 or resnet18-w16-seed0"
_SPEC_RE = re.compile(r"(?P<arch>[a-z0-9]+)(?:-w(?P<width>\d+))?-seed(?P<seed>\d+)")
_MAX_SEED = 2**64 - 1  # torch.manual_seed's upper bound


def _valid_archs() -> str:
    return ", ".join(sorted(ARCHITECTURES))


@dataclass(frozen=True)
class ModelSpec:
    """An authorized model: architecture name, initialisation seed and optional width (None = default)."""

    arch: str
    seed: int
    width: int | None = None

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise UgeError(f"unknown architecture {self.arch!r}; valid: {_valid_archs()} (spec format: {_GRAMMAR})")
        if not 0 <= self.seed <= _MAX_SEED:
            raise UgeError(f"seed must be between 0 and {_MAX_SEED}, got {self.seed} (spec format: {_GRAMMAR})")
        if self.width is not None and self.width < 1:
            raise UgeError(f"width must be a positive integer, got {self.width} (spec format: {_GRAMMAR})")

    @classmethod
    def parse(cls, text: str) -> "ModelSpec":
        """Parse ``ARCH[-wWIDTH]-seedSEED``; the case of the text is ignored."""
        match = _SPEC_RE.fullmatch(text.strip().lower())
        if match is None:
            raise UgeError(f"invalid model spec {text!r}; expected {_GRAMMAR} (architectures: {_valid_archs()})")
        width = match["width"]
        return cls(arch=match["arch"], seed=int(match["seed"]), width=None if width is None else int(width))

    def __str__(self) -> str:
        width = "" if self.width is None else f"-w{self.width}"
        return f"{self.arch}{width}-seed{self.seed}"

    @property
    def resolved_width(self) -> int:
        """The width actually built: the explicit one, else the architecture's default."""
        return self.width if self.width is not None else ARCHITECTURES[self.arch][1]


@contextmanager
def _pinned_torch_defaults(seed: int) -> Iterator[None]:
    """Seed a private copy of the CPU RNG and pin default dtype and device, restoring all of them on exit."""
    dtype = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.float32)
        with torch.random.fork_rng(devices=[]), torch.device("cpu"):
            torch.manual_seed(seed)
            yield
    finally:
        torch.set_default_dtype(dtype)


def build_model(spec: ModelSpec | str, num_classes: int) -> nn.Module:
    """Build the spec's classifier with its seeded initial weights, on CPU and in train mode.

    A pure function of ``(spec, num_classes)``: the caller's RNG state, default dtype and default device
    neither affect the weights nor are changed.
    """
    if isinstance(spec, str):
        spec = ModelSpec.parse(spec)
    if num_classes < 2:
        raise UgeError(f"a classifier needs at least 2 classes, got {num_classes}")
    cls = ARCHITECTURES[spec.arch][0]
    with _pinned_torch_defaults(spec.seed):
        model = cls(num_classes, spec.resolved_width)
    return model.train()


def init_state_bytes(model: nn.Module) -> bytes:
    """Serialise the model's state dict as safetensors (CPU, contiguous, no metadata); same weights, same bytes."""
    from .files import weights_bytes

    return weights_bytes(model)


def init_sha256(spec: ModelSpec | str, num_classes: int) -> str:
    """Fingerprint of the spec's initial weights: sha256 hex digest of their safetensors serialisation."""
    return hashlib.sha256(init_state_bytes(build_model(spec, num_classes))).hexdigest()
