"""Protection methods, peers behind one interface (as peft keeps its tuners): each module has `protect(MethodInput)`.

| name | what it promises | module |
|---|---|---|
| `gradient-matching` | the paper's UGE: a perturbation trained on L_gm + L_fd + L_ud (Ye & Wang, CVPR 2024) | `gradient_matching` |
| `keyed` | the authorized network's key stage K removes the perturbation exactly: K(x_u) = K(T(x)) | `keyed` |
| `lock` | the key holder recovers the exact source images (encrypted, row-bound unlock data) | `lock` |

Adding a method: a module here with `protect(inputs: MethodInput) -> MethodResult`, and one line in `METHODS`.
"""

from __future__ import annotations

from importlib import import_module
from types import ModuleType

from ..errors import UgeError
from .base import MethodInput, MethodResult

METHODS = {"gradient-matching": "gradient_matching", "keyed": "keyed", "lock": "lock"}

__all__ = ["METHODS", "MethodInput", "MethodResult", "get_method"]


def get_method(name: str) -> ModuleType:
    """The module implementing method `name` (imported on first use: the paper's method pulls in the trainer)."""
    if name not in METHODS:
        raise UgeError(f"unknown method {name!r}: use one of {', '.join(METHODS)}")
    return import_module(f".{METHODS[name]}", __name__)
