"""Small file helpers every writer shares, one definition each: an atomic write, weights as safetensors, JSON bytes.

No heavy import at module level (safetensors is imported when weights are serialised).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import UgeError

if TYPE_CHECKING:
    from torch import Tensor, nn


def replace_folder(staging: Path, output: Path) -> Path:
    """Move the finished folder `staging` onto `output`; an existing `output` is retired only once the new one is whole.

    The old folder is renamed aside first, so a failure between the two renames leaves it beside its place
    (`.NAME.old`) rather than lost. Returns `output`.
    """
    if output.exists():
        retired = output.parent / f".{output.name}.old"
        shutil.rmtree(retired, ignore_errors=True)
        os.replace(output, retired)
        os.replace(staging, output)
        shutil.rmtree(retired)
    else:
        os.replace(staging, output)
    return output


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call `write(partial)` on `PATH.partial` beside `path`, then rename it onto `path`.

    A reader, or a run resumed after a kill, sees the old file or the whole new one, never half of one (a rename
    within one folder is atomic). Returns `path`. For whole folders, stage a `.NAME.partial` folder and call
    `replace_folder`.
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


def portable(value):
    """`value` (str, or dicts / lists of them) with every absolute path of a file or folder on this machine cut
    to its last component.

    A release leaves this machine: "/home/alice/models/clip" (a local encoder) says where a file was, not what
    it is, and names a user. Hub ids, relative paths and strings that only look like paths (a class named
    "/m/01yrx") are kept.
    """
    if isinstance(value, dict):
        return {key: portable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [portable(item) for item in value]
    if isinstance(value, str) and value.strip():
        path = os.path.expanduser(value)
        if os.path.isabs(path) and os.path.exists(path):
            return os.path.basename(os.path.normpath(path)) or value
    return value


def check_output_dir(output_dir: str | Path, overwrite: bool) -> Path:
    """Fail early, before hours of training, if the release could not be written."""
    output = Path(output_dir)
    here = Path.cwd().resolve()
    if output.expanduser().resolve() in (here, *here.parents):
        raise UgeError(f"the output {output_dir} is the working folder or one of its parents: choose a subfolder")
    if output.exists() and not output.is_dir():
        raise UgeError(f"the output {output} exists and is not a folder")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise UgeError(f"the output folder {output} is not empty: choose another or pass --overwrite")
    return output
