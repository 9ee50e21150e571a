"""Small file helpers every writer shares, one definition each: an atomic write, weights as safetensors, JSON bytes.

No heavy import at module level (safetensors is imported when weights are serialised).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor, nn


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call `write(partial)` on `PATH.partial` beside `path`, then rename it onto `path`.

    A reader, or a run resumed after a kill, sees the old file or the whole new one, never half of one (a rename
    within one folder is atomic). Returns `path`. For whole folders (a release, its private folder), `release` and
    `private` stage a `.NAME.partial` folder the same way.
    """
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    write(partial)
    os.replace(partial, path)
    return path


def weights_tensors(module: nn.Module, prefix: str = "") -> dict[str, Tensor]:
    """`module`'s state dict as safetensors wants it: each tensor detached, on the CPU, contiguous; keys prefixed."""
    return {f"{prefix}{name}": t.detach().cpu().contiguous() for name, t in module.state_dict().items()}


def weights_bytes(module: nn.Module) -> bytes:
    """`module`'s state dict as one safetensors file (no metadata): the same weights give the same bytes."""
    from safetensors.torch import save

    return save(weights_tensors(module))


def json_bytes(value: Any) -> bytes:
    """`value` as the release's JSON files hold it: indented, keys sorted, one final newline."""
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()
