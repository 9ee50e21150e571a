"""Everything a release will hold, checked before any training: one UgeError naming split, row and column.

`protect()` calls `validate_splits` right after loading. It reads every split that will be written (the protected
ones and, with `keep_other_splits`, the copied ones, which the card's test accuracy may read): schema, labels and
every image, decoded as `to_tensors` decodes it. A mistake in a split that is only copied would otherwise surface
after hours of training, or never (a release that cannot be loaded).
"""

from __future__ import annotations

import os

import datasets
import PIL.Image

from .config import ProtectConfig
from .data import _encoder, _raw_images, class_names_and_encoder, decode_image, infer_image_size
from .errors import UgeError

MIN_SIDE = 16  # every zoo network runs at >= 16 px per side (below it LeNet's convolutions, BatchNorm on 1 x 1 fail)
BYTES_PER_PIXEL = 8  # per protected pixel and channel: uint8 source + uint8 release + float32 x_u (+ slack)


def validate_splits(
    splits: datasets.DatasetDict, config: ProtectConfig, image_column: str, label_column: str
) -> tuple[list[str], tuple[int, int]]:
    """Check the splits a release will hold; return the class names and the training resolution (H, W).

    Per written split: the same features as the first protected split; every label a class of that split (or,
    in a split that is only copied, missing: None / ClassLabel -1, e.g. an unlabelled test split, copied as is);
    every image decodable. Then the training resolution (``config.image_size``, else the most common size of
    the first protected split): at least ``MIN_SIDE`` px per side and small enough for this machine's memory;
    and at least one row per process.

    Raises:
        UgeError: the first problem found, naming split, row and column where there is one.
    """
    fit_name = config.splits[0]
    fit = splits[fit_name]
    written = [name for name in splits if name in config.splits or config.keep_other_splits]
    for name in config.splits:
        if splits[name].num_rows == 0:
            raise UgeError(f"split '{name}' is empty: there is nothing to protect")
    try:
        class_names, _ = class_names_and_encoder(fit, label_column)
        size = (config.image_size, config.image_size) if config.image_size else infer_image_size(fit, image_column)
    except UgeError as e:
        raise UgeError(f"split '{fit_name}': {e}") from None
    for name in written:
        _check_schema(name, splits[name], fit_name, fit)
        _check_labels(name, splits[name], label_column, class_names, fit_name, protected=name in config.splits)
    if min(size) < MIN_SIDE:
        raise UgeError(
            f"the images of split '{fit_name}' are {size[0]}x{size[1]} px: the networks need at least {MIN_SIDE} px"
            f" per side; pass --image-size {MIN_SIDE} (or more) to upsample them"
        )
    _check_memory(splits, config.splits, size, config.shard_rows)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if fit.num_rows < world:
        raise UgeError(f"split '{fit_name}' has {fit.num_rows} row(s), fewer than the {world} processes: run fewer")
    for name in written:  # the slow part last: every image decoded
        _check_images(name, splits[name], image_column)
    return class_names, size


def validate_stream(
    splits: datasets.IterableDatasetDict, config: ProtectConfig, image_column: str, label_column: str
) -> tuple[list[str], tuple[int, int]]:
    """What can be checked of streaming splits before any row is protected; the class names and the resolution.

    A streaming split's rows are not known up front, so its labels and images are checked shard by shard as they are
    read (`check_shard`, before the shard is protected). Here: every written split has the fit split's features, the
    label column is a ClassLabel (the class names must be known before the first shard), and the resolution is
    ``config.image_size``, else the most common size among the first ``shard_rows`` rows of the first protected
    split (pass ``image_size`` to fix it whatever those rows are).

    Raises:
        UgeError: the first problem found.
    """
    fit_name = config.splits[0]
    fit = splits[fit_name]
    feature = fit.features[label_column]
    if not isinstance(feature, datasets.ClassLabel):
        raise UgeError(
            f"the streaming split '{fit_name}' has labels of {feature}, not a ClassLabel: its class names must be known"
            f" before the first shard; cast it first, e.g. ds.cast_column('{label_column}', ClassLabel(names=[...]))"
        )
    for name in splits:
        if name in config.splits or config.keep_other_splits:
            _check_schema(name, splits[name], fit_name, fit)
    if config.image_size:
        size = (config.image_size, config.image_size)
    else:
        head = datasets.Dataset.from_list(list(fit.cast_column(image_column, datasets.Image(decode=False))
                                               .select_columns([image_column]).take(config.shard_rows)))
        if not head.num_rows:
            raise UgeError(f"split '{fit_name}' is empty: there is nothing to protect")
        size = infer_image_size(head.cast_column(image_column, datasets.Image(decode=False)), image_column)
    if min(size) < MIN_SIDE:
        raise UgeError(
            f"the images of split '{fit_name}' are {size[0]}x{size[1]} px: the networks need at least {MIN_SIDE} px"
            f" per side; pass --image-size {MIN_SIDE} (or more) to upsample them"
        )
    need, have = config.shard_rows * 3 * size[0] * size[1] * BYTES_PER_PIXEL, physical_memory()
    if have is not None and need > have:
        raise UgeError(f"a shard of {config.shard_rows} images at {size[0]}x{size[1]} px needs about {_gib(need)} of"
                       f" memory, more than this machine's {_gib(have)}: pass a smaller shard_rows")
    return list(feature.names), size


def check_shard(name: str, part: datasets.Dataset, first_row: int, image_column: str, label_column: str,
                class_names: list[str], fit_name: str, protected: bool) -> None:
    """The checks `validate_splits` makes of a whole split, on one shard of a streaming split (rows `first_row`...):
    every label a class of split `fit_name` (missing only in a copied split), every image decodable. UgeError naming
    split and row; a protected split with no rows is a UgeError too."""
    if protected and first_row == 0 and part.num_rows == 0:
        raise UgeError(f"split '{name}' is empty: there is nothing to protect")
    _check_labels(name, part, label_column, class_names, fit_name, protected, first_row)
    _check_images(name, part, image_column, first_row)


def _check_schema(name: str, split: datasets.Dataset, fit_name: str, fit: datasets.Dataset) -> None:
    """A release is one dataset config: every split has the fit split's columns and types (images may differ
    in the Image feature's decoding options, which the writer unifies)."""
    def schema(ds: datasets.Dataset) -> dict:
        return {column: "Image" if isinstance(f, datasets.Image) else f for column, f in ds.features.items()}

    if schema(split) != schema(fit):
        raise UgeError(
            f"split '{name}' has the features {schema(split)}, split '{fit_name}' has {schema(fit)}: the splits of a"
            " release share one schema; cast or drop that split (--set keep_other_splits=false leaves out every"
            " split that is not protected)"
        )


def _check_labels(name: str, split: datasets.Dataset, column: str, class_names: list[str], fit_name: str,
                  protected: bool, first_row: int = 0) -> None:
    """Every label names a class of the fit split; a missing one is allowed only in a split that is copied.
    `first_row`: the row index of `split`'s first row in its whole split (a shard), for the messages."""
    feature = split.features[column]
    encode = _encoder(class_names, feature, column)
    missing = -1 if isinstance(feature, datasets.ClassLabel) else None
    for row, value in enumerate(split.with_format("arrow")[column].to_pylist(), start=first_row):
        where = f"split '{name}', row {row}, column '{column}'"
        if value is None or value == missing:
            if protected:
                raise UgeError(
                    f"{where}: no label; a protected split needs every label (an unlabelled split can only be"
                    " copied: protect the labelled splits with --split)"
                )
            continue
        try:
            encode(value)
        except UgeError:
            raise UgeError(
                f"{where}: label {value!r} is not one of the {len(class_names)} classes of split '{fit_name}'"
                f" ({', '.join(class_names[:10])}{', ...' if len(class_names) > 10 else ''})"
            ) from None


def _check_images(name: str, split: datasets.Dataset, column: str, first_row: int = 0) -> None:
    """Every image decodes and converts to RGB as `to_tensors` will do it (rows named from `first_row`)."""
    for row, value in _raw_images(split, column):
        row += first_row
        try:
            decode_image(value)
        except (OSError, ValueError, PIL.Image.DecompressionBombError) as e:
            reason = "not an image format Pillow can read" if isinstance(e, PIL.UnidentifiedImageError) else e
            raise UgeError(f"split '{name}', row {row}, column '{column}': could not decode the image: {reason}") from None


def _check_memory(splits: datasets.DatasetDict, protected: list[str], size: tuple[int, int],
                  shard_rows: int | None = None) -> None:
    """The protected splits at the training resolution must fit in this machine's memory (shard by shard: one shard)."""
    rows = sum(splits[name].num_rows for name in protected)
    if shard_rows is not None:
        rows = min(rows, shard_rows)
    need, have = rows * 3 * size[0] * size[1] * BYTES_PER_PIXEL, physical_memory()
    if have is not None and need > have:
        raise UgeError(
            f"{rows} images at {size[0]}x{size[1]} px need about {_gib(need)} of memory to protect, more than this"
            f" machine's {_gib(have)}: pass --image-size to train at a lower resolution"
        )


def _gib(size: int) -> str:
    return f"{size / 2**30:,.1f} GiB" if size >= 2**30 else f"{size / 2**20:,.1f} MiB"


def physical_memory() -> int | None:
    """Bytes of RAM of this machine, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None
