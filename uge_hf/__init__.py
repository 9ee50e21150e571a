"""uge-hf: ungeneralizable examples (Ye & Wang, CVPR 2024) for Hugging Face image datasets.

The public API is flat and lazy: `import uge_hf` loads neither torch nor datasets until a function is used.
"""

from importlib import import_module
from typing import TYPE_CHECKING

from .version import __version__

_EXPORTS = {
    "protect": "pipeline",
    "ProtectResult": "pipeline",
    "ProtectConfig": "config",
    "Recipe": "config",
    "UgeError": "errors",
    "ModelSpec": "specs",
    "build_model": "specs",
    "init_sha256": "specs",
    # Hub release (#4)
    "load_authorized": "authorized",
    "AuthorizedNetwork": "authorized",
    "train_authorized": "authorized_training",
    "load_key": "authorized",
    "verify_release": "verify",
    "push_release": "hub",
    "unlock": "unlocking",  # a module named `unlock` would shadow the function once imported
}

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:
    from .config import ProtectConfig, Recipe
    from .errors import UgeError
    from .pipeline import ProtectResult, protect
    from .specs import ModelSpec, build_model, init_sha256
    from .authorized import AuthorizedNetwork, load_authorized, load_key  # Hub release (#4)
    from .authorized_training import train_authorized
    from .hub import push_release
    from .unlocking import unlock
    from .verify import verify_release


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'uge_hf' has no attribute {name!r}")
