"""Checking a release, local or on the Hub: card, authorized weights, shards, images, and (given the source) the bound.

Every check is a `Check(name, ok, detail)`; a failure's detail names what failed (file, split, row, value).
The parquet shards are read with pyarrow, straight from the files: `datasets.load_dataset(folder)` caches by the
folder's name and card, so a tampered shard could be answered from a stale cache entry.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import UgeError
from .layout import SHARD_NAME, release_data_files, release_path
from .progress import library_bars

if TYPE_CHECKING:
    from .card import AuthorizedEntry, UgeBlock

# datasets' shard naming, as `write_release` writes it: data/{split}-{index:05d}-of-{count:05d}.parquet
_SHOWN = 5  # failing rows named per check, then a count


@dataclass(frozen=True)
class Check:
    """One verification: `name` (e.g. "weights resnet18-seed0", "pixels train"), whether it passed, and why."""

    name: str
    ok: bool
    detail: str

    def __str__(self) -> str:
        return f"{self.name}: {self.detail}"


@library_bars()
def verify_release(
    repo_or_dir: str | os.PathLike,
    original: Any = None,
    *,
    revision: str | None = None,
    authorized_weights: str | os.PathLike | None = None,
    key: str | os.PathLike | None = None,
) -> list[Check]:
    """Check the release `repo_or_dir` (a folder or a Hub dataset id); return one `Check` per thing checked.

    Checks the card's `uge:` block (schema and version), every authorized weights file (sha256 vs the card vs
    the spec rebuilt here), the shards (names, schema and row counts vs the card's `dataset_info`), and the size
    and mode of every image of the protected splits. With `original` (a folder, Hub id, `Dataset` or
    `DatasetDict`: the source the release was made from), also that every protected pixel is within the card's
    `pixel_bound` of the source and that every label is unchanged, row by row. Private authorized weights (the keyed
    method) are checked when `authorized_weights` (the file or private folder the publisher gave) is passed; the
    release itself must then hold no key material. With `key` (a lock release's key file or private folder), every
    protected row must unlock, and with `original` too, to the source image bit for bit.

    Raises UgeError only when the release cannot be read at all (no such folder, Hub unreachable).
    """
    from .fetch import fetch_release

    folder = fetch_release(repo_or_dir, revision)
    uge, problem = _read_card(folder)
    if uge is None:
        return [Check("card", False, problem)]
    checks = [Check("card", True, f"uge schema version {uge.schema_version}, made with uge-hf {uge.uge_hf_version}")]
    checks += [_check_weights(folder, net, authorized_weights) for net in uge.authorized]
    checks.append(_check_no_key_material(folder))
    info, problem = _read_dataset_info(folder)
    files = release_data_files(folder)
    if info is None:
        checks.append(Check("shards", False, problem))
    else:
        checks += _check_shards(files, info)
    checks += _pixel_checks(uge, files, original)
    if key is not None:
        checks += _check_unlock(folder, uge, key, original)
    return checks


def _check_unlock(folder: Path, uge: UgeBlock, key: str | os.PathLike, original: Any) -> list[Check]:
    """Every protected row of a lock release opens with `key`; with `original`, to the source's pixels exactly."""
    from .unlocking import unlock

    try:
        unlocked = unlock(folder, key)
    except UgeError as e:
        return [Check("unlock", False, str(e))]
    checks = []
    source = None
    if original is not None:
        from .data import load_map_style, to_tensors

        source = load_map_style(original)
    for split in uge.protected_splits:
        rows = unlocked[split].num_rows
        if source is None:
            checks.append(Check(f"unlock {split}", True, f"{rows} rows open with the key (authentic, bound to their rows)"))
            continue
        image, label, size, names = uge.image_column, uge.label_column, uge.image_size, uge.class_names
        got = to_tensors(unlocked[split], image, label, size, names).images
        want = to_tensors(source[split], image, label, size, names).images
        bad = (got != want).reshape(len(got), -1).any(1).nonzero().flatten().tolist() if got.shape == want.shape else list(range(rows))
        detail = (f"{rows} rows unlock to the source images bit for bit" if not bad else
                  f"{len(bad)} rows differ from the source after unlocking: rows {', '.join(map(str, bad[:_SHOWN]))}")
        checks.append(Check(f"unlock {split}", not bad, detail))
    return checks


def check_against_source(folder: str | os.PathLike, original: Any) -> list[Check]:
    """The pixel and label checks of `verify_release(folder, original)` alone, on a local release folder.

    Every image of a protected split decodes (PNG, RGB, the card's size) and is within `pixel_bound` levels of
    `original` (the source prepared as `protect` prepared it); every label is the source's. `protect()` runs
    this on its staging folder before moving the release into place.
    """
    uge, problem = _read_card(Path(folder))
    if uge is None:
        return [Check("card", False, problem)]
    return _pixel_checks(uge, release_data_files(folder), original)


def _pixel_checks(uge: UgeBlock, files: dict[str, list[Path]], original: Any) -> list[Check]:
    """The images of each protected split; with `original`, the bound and the labels against it."""
    checks, pixels = [], {}
    for split in uge.protected_splits:
        check, pixels[split] = _check_images(split, files.get(split, []), uge, keep_pixels=original is not None)
        checks.append(check)
    if original is not None:
        checks += _check_against_original(original, uge, files, pixels)
    return checks


# --- the card -----------------------------------------------------------------------------------------------

def _read_card(folder: Path) -> tuple[UgeBlock | None, str]:
    """The checked `uge:` block (`card.read_card`), or (None, what is wrong with it)."""
    from .card import read_card

    try:
        return read_card(folder), ""
    except UgeError as e:
        return None, str(e)


def _read_dataset_info(folder: Path):
    """The card's `dataset_info` (features and rows per split) as a `datasets.DatasetInfo`, or (None, why)."""
    from datasets.info import DatasetInfosDict
    from huggingface_hub import DatasetCard

    try:
        infos = DatasetInfosDict.from_dataset_card_data(DatasetCard.load(folder / "README.md").data)
    except Exception as e:
        return None, f"README.md: the card's dataset_info cannot be read ({type(e).__name__}: {e})"
    info = infos.get("default") or next(iter(infos.values()), None)
    if info is None or info.features is None or not info.splits:
        return None, "README.md: the card has no dataset_info with features and splits"
    return info, ""


# --- authorized weights ---------------------------------------------------------------------------------------


def _check_weights(folder: Path, net: AuthorizedEntry, weights: str | os.PathLike | None) -> Check:
    """The authorized weights (the release's, or the private file given) against the card and the spec rebuilt here."""
    from .authorized import read_weights, weight_problems

    name = f"weights {net.spec}"
    if net.private and weights is None:
        return Check(name, True, f"private (not in the release; sha256 {net.init_sha256} in the card):"
                                 " pass --authorized-weights PATH to check a copy")
    try:
        content = read_weights(folder, net, weights)
    except UgeError as e:
        return Check(name, False, str(e))
    problems = weight_problems(net, content, str(weights) if weights is not None else None)
    if not net.private and net.weights:
        sidecar = net.weights.removesuffix(".safetensors") + ".json"
        if release_path(folder, sidecar).is_file():
            try:
                declared = json.loads(release_path(folder, sidecar).read_text()).get("init_sha256")
            except (ValueError, AttributeError):
                declared = "unreadable"
            if declared != net.init_sha256:
                problems.append(f"{sidecar} declares init_sha256 {declared}, the card {net.init_sha256}")
    if problems:
        return Check(name, False, "; ".join(problems))
    where = str(weights) if weights is not None else (net.weights or "the public init")
    return Check(name, True, f"{where} sha256 {net.init_sha256} = card = {net.spec} rebuilt here")


def _check_no_key_material(folder: Path) -> Check:
    """A release must not hold what authorizes (a key file, a key stage): it is published."""
    found = key_material(folder)
    if found:
        return Check("no key material", False, f"the release holds key material: {', '.join(found)}")
    return Check("no key material", True, "no key file and no key stage in the release")


def key_material(folder: Path) -> list[str]:
    """Release-relative paths of files that look like they authorize: a uge-hf key file (whatever its name) or
    weights holding a key stage (safetensors, torch pickles, any prefix). Parquet shards (the data) are skipped."""
    from .keyfile import KEY_FORMAT

    markers = (KEY_FORMAT.encode(), b"key_stage.")
    found = []
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file() and ".git" not in p.parts):
        if path.suffix == ".parquet":
            continue
        with path.open("rb") as f:  # a byte search: key names are stored uncompressed by safetensors and torch.save
            head = f.read(64 * 2**20)
        if any(marker in head for marker in markers):
            found.append(str(path.relative_to(folder)))
    return found


# --- shards ---------------------------------------------------------------------------------------------------


def _check_shards(files: dict[str, list[Path]], info) -> list[Check]:
    """Per split: a complete set of shards, with the card's features and its number of rows."""
    import pyarrow.parquet as pq
    from datasets import Features

    checks = []
    for split in [*info.splits, *(s for s in files if s not in info.splits)]:
        name, problems, rows = f"shards {split}", [], 0
        if split not in info.splits:
            checks.append(Check(name, False, f"data/ has shards of a split the card does not list: {', '.join(p.name for p in files[split])}"))
            continue
        paths = files.get(split, [])
        if not paths:
            checks.append(Check(name, False, f"the card lists split {split} ({info.splits[split].num_examples} rows) but data/ has no shard of it"))
            continue
        counts = {(SHARD_NAME.match(p.name) or {"count": None})["count"] for p in paths}
        if None in counts or len(counts) != 1:
            problems.append(f"shard names do not follow {split}-0000i-of-0000n.parquet: {', '.join(p.name for p in paths)}")
        else:
            count = int(counts.pop())
            present = {int(SHARD_NAME.match(p.name)["index"]) for p in paths}
            absent = [f"data/{split}-{i:05d}-of-{count:05d}.parquet" for i in range(count) if i not in present]
            if absent:
                problems.append(f"missing shard(s) {', '.join(absent)}")
        for path in paths:
            try:
                parquet = pq.ParquetFile(path)
                rows += parquet.metadata.num_rows
                features = Features.from_arrow_schema(parquet.schema_arrow)
            except Exception as e:
                problems.append(f"data/{path.name} is not a readable parquet file ({e})")
                continue
            if features != info.features:
                problems.append(f"data/{path.name} has features {_describe(features)}, the card {_describe(info.features)}")
        expected = info.splits[split].num_examples
        if rows != expected:
            problems.append(f"{rows} rows in the shards, the card says {expected}")
        ok = not problems
        checks.append(Check(name, ok, f"{len(paths)} shard(s), {rows} rows, features as in the card" if ok else "; ".join(problems)))
    return checks


def _describe(features) -> str:
    return "{" + ", ".join(f"{k}: {type(v).__name__}" + (f"{v.names}" if hasattr(v, "names") else f"({getattr(v, 'dtype', '')})") for k, v in features.items()) + "}"


# --- images ---------------------------------------------------------------------------------------------------


def _iter_rows(paths: list[Path], columns: list[str]):
    """(file name, row in file, {column: value}) for every row, read batch by batch with pyarrow."""
    import pyarrow.parquet as pq

    for path in paths:
        row = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=256, columns=columns):
            values = {column: batch.column(column).to_pylist() for column in columns}
            for i in range(batch.num_rows):
                yield path.name, row, {column: values[column][i] for column in columns}
                row += 1


def _check_images(split: str, paths: list[Path], uge: UgeBlock, keep_pixels: bool) -> tuple[Check, tuple | None]:
    """Every image of a protected split is a PNG, RGB, at the card's image size.

    With `keep_pixels`, also returns (N x H x W x 3 uint8 pixels, "data/FILE row R" of each row).
    """
    import PIL.Image

    name = f"images {split}"
    height, width = uge.image_size
    column = uge.image_column
    if not paths:
        return Check(name, False, f"protected split {split} has no shards in data/"), None
    problems, pixels, origins, count = [], [], [], 0
    try:
        for file, row, value in _iter_rows(paths, [column]):
            count += 1
            image = value[column]
            where = f"data/{file} row {row}"
            if not image or image.get("bytes") is None:
                problems.append(f"{where}: no embedded image bytes")
                continue
            try:
                with PIL.Image.open(io.BytesIO(image["bytes"])) as decoded:
                    decoded.load()
                    found = (decoded.format, decoded.mode, decoded.size)
                    array = np.asarray(decoded) if keep_pixels else None
            except (OSError, ValueError, PIL.Image.DecompressionBombError) as e:
                problems.append(f"{where}: cannot decode the image ({e})")
                continue
            if found != ("PNG", "RGB", (width, height)):
                problems.append(f"{where}: {found[0]} {found[1]} {found[2][1]}x{found[2][0]}, expected PNG RGB {height}x{width}")
            elif keep_pixels:
                pixels.append(array)
                origins.append(where)
    except Exception as e:  # a shard without the image column, or not parquet at all
        return Check(name, False, f"cannot read column '{column}' of split {split}: {e}"), None
    if problems:
        return Check(name, False, _summarise(problems)), None
    kept = (np.stack(pixels) if pixels else np.zeros((0, height, width, 3), np.uint8), origins) if keep_pixels else None
    return Check(name, True, f"{count} images, PNG RGB {height}x{width}"), kept


def _summarise(problems: list[str]) -> str:
    shown = "; ".join(problems[:_SHOWN])
    return shown + (f"; ... ({len(problems)} in all)" if len(problems) > _SHOWN else "")


# --- against the source ---------------------------------------------------------------------------------------


def _label_names(values: list, feature) -> list[str]:
    """Stored labels -> class names (a ClassLabel index names its class; other labels name themselves)."""
    import datasets

    if isinstance(feature, datasets.ClassLabel):
        return [feature.names[v] if isinstance(v, int) and 0 <= v < len(feature.names) else f"<invalid {v!r}>" for v in values]
    return [str(v) for v in values]


def _check_against_original(original: Any, uge: UgeBlock, files: dict[str, list[Path]], pixels: dict) -> list[Check]:
    """Protected pixels within the bound of the source prepared as `protect` prepared it; labels row by row."""
    from .data import load_map_style, resolve_columns, to_tensors

    try:
        source = load_map_style(original)
    except UgeError as e:
        return [Check("original", False, f"cannot load the original dataset: {e}")]
    image_column, label_column = uge.image_column, uge.label_column
    bound, size = uge.pixel_bound, uge.image_size
    checks = []
    for split in uge.protected_splits:
        name = f"pixels {split}"
        if split not in source:
            checks.append(Check(name, False, f"the original has no split {split} (it has {', '.join(source)})"))
            continue
        if pixels.get(split) is None:
            checks.append(Check(name, False, f"the images of {split} could not be read (see 'images {split}')"))
            continue
        released, origins = pixels[split]
        try:
            resolve_columns(source[split], image_column, label_column)
            clean = to_tensors(source[split], image_column, label_column, size, uge.class_names)
        except UgeError as e:
            checks.append(Check(name, False, f"the original's split {split} cannot be prepared: {e}"))
            continue
        clean_pixels = clean.images.permute(0, 2, 3, 1).numpy()
        if len(clean_pixels) != len(released):
            checks.append(Check(name, False, f"the release has {len(released)} rows of {split}, the original {len(clean_pixels)}"))
            continue
        def diff(rows: slice) -> np.ndarray:
            return np.abs(released[rows].astype(np.int16) - clean_pixels[rows].astype(np.int16))

        worst = np.concatenate([  # the largest |diff| of each row, a chunk of rows at a time
            np.zeros(0, np.int16),
            *(diff(slice(i, i + 1024)).reshape(-1, released[0].size).max(axis=1) for i in range(0, len(released), 1024)),
        ])
        bad = np.flatnonzero(worst > bound)
        if len(bad):
            problems = []
            for row in bad[:_SHOWN]:
                row_diff = diff(slice(row, row + 1))[0]
                y, x, c = np.unravel_index(row_diff.argmax(), row_diff.shape)
                problems.append(
                    f"{origins[row]} ({split} row {row}): pixel (y={y}, x={x}, channel {c}) is {released[row, y, x, c]}, source"
                    f" {clean_pixels[row, y, x, c]}: {row_diff[y, x, c]} levels > bound {bound}"
                )
            checks.append(Check(name, False, _summarise(problems) + (f" ({len(bad)} rows over)" if len(bad) > _SHOWN else "")))
        else:
            checks.append(Check(name, True, f"{len(released)} images within {bound} levels of the source (max {int(worst.max(initial=0))})"))
    for split in [s for s in source if s in files]:
        checks.append(_check_labels(split, files[split], source[split], label_column))
    return checks


def _check_labels(split: str, paths: list[Path], source, label_column: str) -> Check:
    """Every row's label in the release names the same class as the source's, row by row."""
    import pyarrow.parquet as pq
    from datasets import Features

    name = f"labels {split}"
    try:
        feature = Features.from_arrow_schema(pq.ParquetFile(paths[0]).schema_arrow)[label_column]
        rows = list(_iter_rows(paths, [label_column]))
        released = _label_names([value[label_column] for _, _, value in rows], feature)
    except Exception as e:
        return Check(name, False, f"cannot read column '{label_column}' of split {split}: {e}")
    if label_column not in source.features:
        return Check(name, False, f"the original's split {split} has no column '{label_column}'")
    original = _label_names(source.with_format("arrow")[label_column].to_pylist(), source.features[label_column])
    if len(released) != len(original):
        return Check(name, False, f"the release has {len(released)} rows of {split}, the original {len(original)}")
    changed = [
        f"data/{rows[row][0]} row {rows[row][1]} ({split} row {row}): {new!r}, source {old!r}"
        for row, (new, old) in enumerate(zip(released, original)) if new != old
    ]
    if changed:
        return Check(name, False, "labels changed: " + _summarise(changed))
    return Check(name, True, f"{len(released)} labels identical to the source")
