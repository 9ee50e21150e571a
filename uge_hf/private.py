"""The private folder beside a release (`OUTPUT.private/`): key material for the data owner, never published.

It holds what authorizes a party (the keyed method's `key.json`, the authorized weights); the release's card holds
only their sha256. The folder is created with mode 0700 and its files 0600, written in a staging folder and moved
into place only once the release itself is written, so a failed run leaves neither half a release nor a key to a
release that does not exist.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import UgeError

PRIVATE_SUFFIX = ".private"
PRIVATE_README = """# Private: do not publish

This folder authorizes its holder to learn from the release `{release}`. Keep it out of the release, the Hub and
version control. Share it only with the parties you authorize.

- `key.json`: the key (whoever holds it is authorized; `uge-hf protect ... --key {folder}` protects more data for
  the same authorized party).
- `authorized/SPEC/model.safetensors`: the authorized network's initial weights (key stage + backbone); the
  release card records their sha256. `uge-hf verify RELEASE --authorized-weights authorized/SPEC/model.safetensors`
  checks them, `uge_hf.train_authorized(RELEASE, weights=...)` trains with the card's recipe, and
  `uge_hf.load_key(...)` returns the key stage for your own training loop (apply it before augmentation).
"""


def private_dir_for(output: str | os.PathLike) -> Path:
    """`OUTPUT.private` beside the release folder `OUTPUT` (resolved first, so `.` or `..` name a real folder)."""
    output = Path(output).expanduser().resolve()
    if not output.name:
        raise UgeError(f"the release folder {output} has no name to put its private folder beside: choose a subfolder")
    return output.parent / f"{output.name}{PRIVATE_SUFFIX}"


@contextmanager
def write_private(folder: Path | None, files: dict[str, bytes]) -> Iterator[None]:
    """Stage `files` (relative path -> bytes) for `folder`; move them into place when the block succeeds.

    Nothing is written when `files` is empty (a method with nothing private); an existing `folder` (an earlier
    run's key, which does not belong to the new release) is then removed with it. Otherwise it is replaced.
    """
    if folder is None:
        yield
        return
    folder = folder.resolve()
    if not files:
        yield
        shutil.rmtree(folder, ignore_errors=True)
        return
    staging = folder.parent / f".{folder.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)  # the release's parents keep the user's own permissions
    old_mask = os.umask(0o077)  # every folder and file created below: owner only
    try:
        staging.mkdir(mode=0o700)
        for relative, content in {**files, "README.md": PRIVATE_README.format(
                release=folder.name.removesuffix(PRIVATE_SUFFIX), folder=folder.name).encode()}.items():
            path = staging / relative
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            path.write_bytes(content)
            path.chmod(0o600)
    finally:
        os.umask(old_mask)
    try:
        yield
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(staging, folder)
