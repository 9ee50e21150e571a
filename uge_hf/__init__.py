"""uge-hf: ungeneralizable examples (Ye & Wang, CVPR 2024) for Hugging Face image datasets.

The public API is flat and lazy: `import uge_hf` loads neither torch nor datasets until a function is used.
"""

from importlib import import_module
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "protect": "pipeline",
    "ProtectConfig": "config",
    "Recipe": "config",
    "UgeError": "errors",
    "ModelSpec": "specs",
    "build_model": "specs",
    "init_sha256": "specs",
}

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:
    from .config import ProtectConfig, Recipe
    from .errors import UgeError
    from .pipeline import protect
    from .specs import ModelSpec, build_model, init_sha256


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'uge_hf' has no attribute {name!r}")
