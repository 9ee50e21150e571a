"""Hugging Face image-classification datasets to tensors, and back.

Any dataset with one image column and one label column works: the columns are detected from the
features (``datasets.Image``, ``datasets.ClassLabel``) or named explicitly. Images are decoded here
rather than by ``datasets`` so that a broken file is reported with its row instead of a traceback.
"""

from __future__ import annotations

import io
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
from rich.console import Console
from rich.progress import track

from uge_hf.errors import UgeError

# Conventional label column names, most preferred first.
LABEL_COLUMN_NAMES = ("label", "labels", "class", "target", "fine_label", "coarse_label")

_INT_DTYPES = {"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"}
_STRING_DTYPES = {"string", "large_string"}
# A Hub id is "name" or "owner/name"; anything else that is not on disk must be a mistyped local path.
_HUB_ID = re.compile(r"^(?:[\w.-]+/)?[\w.-]+$")
# Rows are read from Arrow in batches: per-row access through `datasets` is much slower.
_BATCH_SIZE = 256


@dataclass
class ClassificationTensors:
    """A whole split in memory, ready for training."""

    images: torch.Tensor  # uint8, N x 3 x H x W, RGB, at the training resolution
    labels: torch.Tensor  # int64, N, class indices 0..K-1
    class_names: list[str]  # K names, index = class index
    image_size: tuple[int, int]  # (H, W)


def load_source(
    source: str | os.PathLike | datasets.Dataset | datasets.DatasetDict,
) -> datasets.DatasetDict:
    """Return ``source`` as a DatasetDict: a dataset object, a local folder or a Hub id."""
    if isinstance(source, datasets.DatasetDict):
        return source
    if isinstance(source, datasets.Dataset):
        return datasets.DatasetDict({"train": source})
    if isinstance(source, (datasets.IterableDataset, datasets.IterableDatasetDict)):
        raise UgeError("streaming datasets are not supported: load the dataset without streaming=True")
    if not isinstance(source, (str, os.PathLike)):
        raise UgeError(f"cannot load a dataset from a {type(source).__name__}: pass a folder, a Hub id or a Dataset")

    path = os.path.expanduser(os.fspath(source))
    is_local = os.path.exists(path)
    if not is_local and (isinstance(source, os.PathLike) or not _HUB_ID.match(path) or path.startswith(".")):
        raise UgeError(f"no such file or folder: {path}")
    if os.path.isfile(path):
        raise UgeError(f"{path} is a file: pass the dataset folder that holds it (load_dataset reads folders)")
    try:
        loaded = datasets.load_dataset(path)
    except datasets.exceptions.DatasetNotFoundError as e:
        raise UgeError(
            f"dataset '{path}' is neither a local folder nor a dataset on the Hugging Face Hub ({e}); check the name"
        ) from e
    except ConnectionError as e:
        raise UgeError(
            f"'{path}' is not a local folder and the Hugging Face Hub could not be reached ({e}); "
            "pass a local folder, e.g. a pre-downloaded copy of the dataset"
        ) from e
    except (OSError, ValueError, datasets.exceptions.DatasetsError) as e:
        where = "local dataset" if is_local else "Hub dataset"
        raise UgeError(f"could not load the {where} '{path}': {e}") from e
    if not isinstance(loaded, datasets.DatasetDict):
        raise UgeError(f"'{path}' did not load as a dataset with splits (got {type(loaded).__name__})")
    return loaded


def resolve_columns(
    ds: datasets.Dataset, image_column: str | None = None, label_column: str | None = None
) -> tuple[str, str]:
    """Return the (image, label) column names: the explicit ones if given, else detected from the features."""
    features = ds.features
    for name, option in ((image_column, "--image-column"), (label_column, "--label-column")):
        if name is not None and name not in features:
            raise UgeError(f"{option} '{name}' is not a column of the dataset; its columns are {list(features)}")

    if image_column is None:
        images = [name for name, feature in features.items() if isinstance(feature, datasets.Image)]
        if not images:
            raise UgeError(f"no image column (datasets.Image) among {list(features)}: pass --image-column")
        if len(images) > 1:
            raise UgeError(f"several image columns {images}: pass --image-column to pick one")
        image_column = images[0]
    elif not isinstance(features[image_column], datasets.Image):
        raise UgeError(
            f"--image-column '{image_column}' holds {features[image_column]}, not images: name a datasets.Image column"
        )

    if label_column is None:
        label_column = _detect_label_column(features, exclude=image_column)
    elif _label_kind(features[label_column]) is None:
        raise UgeError(
            f"--label-column '{label_column}' holds {features[label_column]}, not class labels"
            " (expected a ClassLabel, integer or string column)"
        )
    return image_column, label_column


def _detect_label_column(features: datasets.Features, exclude: str) -> str:
    """A single ClassLabel column, else a conventionally named int/string column; "label" wins ties."""
    candidates = [name for name, f in features.items() if name != exclude and isinstance(f, datasets.ClassLabel)]
    if not candidates:
        candidates = [
            name for name in LABEL_COLUMN_NAMES if name in features and _label_kind(features[name]) is not None
        ]
    if not candidates:
        raise UgeError(
            f"no label column among {list(features)} (no ClassLabel, none named {'/'.join(LABEL_COLUMN_NAMES)}):"
            " pass --label-column"
        )
    if len(candidates) > 1 and "label" not in candidates:
        raise UgeError(f"several possible label columns {candidates}: pass --label-column to pick one")
    return "label" if "label" in candidates else candidates[0]


def _label_kind(feature: Any) -> str | None:
    """"classlabel", "int" or "string" for usable label features, else None."""
    if isinstance(feature, datasets.ClassLabel):
        return "classlabel"
    if isinstance(feature, datasets.Value) and feature.dtype in _INT_DTYPES:
        return "int"
    if isinstance(feature, datasets.Value) and feature.dtype in _STRING_DTYPES:
        return "string"
    return None


def _label_values(ds: datasets.Dataset, label_column: str) -> list[Any]:
    """All labels of the column; a missing one (None, or ClassLabel's -1) is an error naming its row."""
    feature = ds.features[label_column]
    if _label_kind(feature) is None:
        raise UgeError(f"column '{label_column}' holds {feature}, not class labels: pass another --label-column")
    values = ds.with_format("arrow")[label_column].to_pylist()
    missing = -1 if isinstance(feature, datasets.ClassLabel) else None
    for row, value in enumerate(values):
        if value is None or value == missing:
            raise UgeError(f"row {row} of column '{label_column}' has no label; drop unlabeled rows first")
    return values


def _label_namer(feature: Any) -> Callable[[Any], str]:
    """Map a stored label to its class name: ClassLabel ints index its names, other labels name themselves."""
    if isinstance(feature, datasets.ClassLabel):
        names = feature.names
        return lambda value: names[value] if 0 <= value < len(names) else str(value)
    return str


def class_names_and_encoder(ds: datasets.Dataset, label_column: str) -> tuple[list[str], Callable[[Any], int]]:
    """The class names of the column and a function from a stored label to its class index.

    ClassLabel keeps its names and indices; integer labels are ranked by value and named ``str(value)``;
    string labels are sorted.
    """
    feature = ds.features[label_column]
    values = _label_values(ds, label_column)
    distinct = sorted(set(values))
    if len(distinct) < 2:
        present = ", ".join(map(_label_namer(feature), distinct)) or "none"
        raise UgeError(
            f"column '{label_column}' has {len(distinct)} class ({present}): training a classifier needs at least"
            " two classes"
        )
    if isinstance(feature, datasets.ClassLabel):
        names = list(feature.names)
    else:
        names = [str(value) for value in distinct]
    return names, _encoder(names, feature, label_column)


def _encoder(class_names: list[str], feature: Any, label_column: str) -> Callable[[Any], int]:
    """Label -> index of its class name in ``class_names``; an unknown label is a UgeError."""
    index = {name: i for i, name in enumerate(class_names)}
    name_of = _label_namer(feature)

    def encode(value: Any) -> int:
        name = name_of(value)
        if name not in index:
            raise UgeError(
                f"label {name!r} of column '{label_column}' is not one of the {len(class_names)} known classes"
                f" ({', '.join(class_names[:10])}{', ...' if len(class_names) > 10 else ''})"
            )
        return index[name]

    return encode


def infer_image_size(ds: datasets.Dataset, image_column: str) -> tuple[int, int]:
    """The most common (H, W) among the images, the first seen on ties; reads only the file headers."""
    sizes: Counter[tuple[int, int]] = Counter()
    for row, value in _raw_images(ds, image_column):
        try:
            with _open_image(value) as image:
                width, height = image.size
                # Rotated EXIF orientations swap the sides once to_tensors stands the image upright. Only EXIF
                # already read with the header is looked at: getexif() would otherwise decode a whole PNG.
                if "exif" in image.info and image.getexif().get(PIL.Image.ExifTags.Base.Orientation) in (5, 6, 7, 8):
                    width, height = height, width
        except (OSError, ValueError, PIL.Image.DecompressionBombError) as e:
            raise _decode_error(row, image_column, e) from e
        sizes[(height, width)] += 1
    if not sizes:
        raise UgeError("the dataset split is empty: there are no images to size")
    return sizes.most_common(1)[0][0]


def to_tensors(
    ds: datasets.Dataset,
    image_column: str,
    label_column: str,
    image_size: tuple[int, int] | None = None,
    class_names: list[str] | None = None,
    progress: bool = False,
) -> ClassificationTensors:
    """Decode a split into uint8 RGB images at ``image_size`` and int64 labels.

    ``image_size`` defaults to the most common size in the split. Pass the training split's
    ``image_size`` and ``class_names`` when converting another split so that both share one
    resolution and one label mapping.
    """
    if len(ds) == 0:
        raise UgeError("the dataset split is empty: it has no rows to convert")
    if class_names is None:
        class_names, encode = class_names_and_encoder(ds, label_column)
    else:
        encode = _encoder(class_names, ds.features[label_column], label_column)
    if image_size is None:
        image_size = infer_image_size(ds, image_column)

    labels = torch.empty(len(ds), dtype=torch.int64)
    for row, value in enumerate(_label_values(ds, label_column)):
        try:
            labels[row] = encode(value)
        except UgeError as e:
            raise UgeError(f"row {row}: {e}") from None

    height, width = image_size
    images = torch.empty((len(ds), 3, height, width), dtype=torch.uint8)
    rows = track(
        _raw_images(ds, image_column),
        total=len(ds),
        description="Decoding images",
        disable=not progress,
        console=Console(stderr=True),
    )
    for row, value in rows:
        try:
            with _open_image(value) as image:
                image.load()
                # Same orientation handling as datasets.Image, so pixels match what users see there.
                if image.getexif().get(PIL.Image.ExifTags.Base.Orientation) is not None:
                    image = PIL.ImageOps.exif_transpose(image)
                pixels = prepare_image(image, image_size)
        except (OSError, ValueError, PIL.Image.DecompressionBombError) as e:
            raise _decode_error(row, image_column, e) from e
        images[row] = torch.from_numpy(pixels).permute(2, 0, 1)
    return ClassificationTensors(images=images, labels=labels, class_names=list(class_names), image_size=image_size)


def prepare_image(image: PIL.Image.Image, image_size: tuple[int, int]) -> np.ndarray:
    """Any PIL image -> uint8 H x W x 3 RGB array at ``image_size`` (H, W).

    Alpha is dropped, not composited (``convert("RGB")``, as torchvision and transformers do), so
    transparent pixels keep their stored colour. Integer images ("I;16*", "I") are taken as 16-bit and
    scaled to 8 bits rather than clipped. A different size is resized with bicubic resampling.
    """
    if image.mode.startswith("I;16") or image.mode == "I":
        wide = np.asarray(image).astype(np.float64)
        image = PIL.Image.fromarray(np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8))
    if image.mode != "RGB":
        image = image.convert("RGB")
    height, width = image_size
    if image.size != (width, height):
        image = image.resize((width, height), resample=PIL.Image.Resampling.BICUBIC)
    return np.array(image, dtype=np.uint8)  # a writable copy, so torch.from_numpy is safe


def to_pil_images(images: torch.Tensor) -> list[PIL.Image.Image]:
    """uint8 N x 3 x H x W tensors -> RGB PIL images, pixel for pixel."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected a uint8 N x 3 x H x W tensor, got {images.dtype} {tuple(images.shape)}")
    arrays = images.detach().cpu().permute(0, 2, 3, 1).contiguous().numpy()
    return [PIL.Image.fromarray(array) for array in arrays]


def _raw_images(ds: datasets.Dataset, image_column: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row, {"bytes", "path"}) for every image, undecoded."""
    undecoded = ds.cast_column(image_column, datasets.Image(decode=False)).select_columns([image_column])
    row = 0
    for batch in undecoded.with_format("arrow").iter(batch_size=_BATCH_SIZE):
        for value in batch.column(image_column).to_pylist():
            yield row, value
            row += 1


def _open_image(value: dict[str, Any] | None) -> PIL.Image.Image:
    """Open (lazily: header only) an undecoded image from its bytes or its local path."""
    if value is None or (value.get("bytes") is None and value.get("path") is None):
        raise ValueError("the row has no image")
    if value.get("bytes") is not None:
        return PIL.Image.open(io.BytesIO(value["bytes"]))
    return PIL.Image.open(value["path"])


def _decode_error(row: int, image_column: str, error: Exception) -> UgeError:
    # PIL's own message for unknown data names an in-memory BytesIO object, which tells the user nothing.
    reason = "not an image format Pillow can read" if isinstance(error, PIL.UnidentifiedImageError) else error
    return UgeError(f"could not decode the image in row {row} of column '{image_column}': {reason}")
