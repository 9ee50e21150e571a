"""Reading a release folder: where its files are (the layout `release.write_release` writes) and its shards.

    README.md                          dataset card with the `uge:` YAML block
    data/{split}-0000i-of-0000n.parquet
    authorized/{spec}.safetensors      gradient-matching with public weights only
    preview.png, uge_config.json

Readers (verify, authorized, evaluate) import this module, the writer too; it imports neither.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import UgeError
from .files import json_bytes  # noqa: F401 (the writers' JSON, importable from here as before)

SHARD_NAME = re.compile(r"^(?P<split>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.parquet$")


def release_data_files(folder: str | os.PathLike) -> dict[str, list[Path]]:
    """Split -> its parquet shards under `data/`, in shard order (the layout `write_release` and the Hub use)."""
    files: dict[str, list[Path]] = {}
    data = Path(folder) / "data"
    for path in sorted(data.glob("*.parquet")) if data.is_dir() else []:
        match = SHARD_NAME.match(path.name)
        files.setdefault(match["split"] if match else path.stem, []).append(path)
    return files


def read_split(files: list[Path]):
    """The rows of `files` as an in-memory `datasets.Dataset`, features from the parquet metadata; no cache."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not files:
        raise UgeError("no parquet shards to read")
    try:
        tables = [pq.read_table(path) for path in files]
        return datasets.Dataset(pa.concat_tables(tables) if len(tables) > 1 else tables[0])
    except (OSError, ValueError, pa.ArrowException) as e:
        raise UgeError(f"cannot read the shards {', '.join(p.name for p in files)}: {e}") from None


def load_release(folder: str | os.PathLike, splits: list[str] | None = None):
    """The release's splits (all, or `splits`) as a `DatasetDict` read straight from its shards."""
    import datasets

    files = release_data_files(folder)
    missing = [split for split in splits or [] if split not in files]
    if missing:
        raise UgeError(f"the release {folder} has no shards for split(s) {', '.join(missing)} (it has {', '.join(files) or 'none'})")
    return datasets.DatasetDict({split: read_split(files[split]) for split in (splits or files)})


def release_path(folder: Path, relative: str) -> Path:
    """`folder / relative`, refusing a path that leaves the release (a card could say "../../x").

    Checked on the path as written, not resolved: in the HF cache a snapshot's files are symlinks into `blobs/`.
    """
    normal = os.path.normpath(relative)
    if Path(relative).is_absolute() or normal == ".." or normal.startswith(".." + os.sep):
        raise UgeError(f"the card names {relative!r}, which is outside the release folder")
    return folder / normal


