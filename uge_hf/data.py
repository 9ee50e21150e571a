"""Hugging Face image-classification datasets to tensors, and back.

Any dataset with one image column and one label column works: the columns are detected from the
features (``datasets.Image``, ``datasets.ClassLabel``) or named explicitly. Images are decoded here
rather than by ``datasets`` so that a broken file is reported with its row instead of a traceback.
"""

from __future__ import annotations

import io
import os

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
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
from uge_hf.fetch import HUB_ID
from uge_hf.progress import progress_enabled

# Conventional label column names, most preferred first.
LABEL_COLUMN_NAMES = ("label", "labels", "class", "target", "fine_label", "coarse_label")
# Held-out split names, most preferred first: the one a card's and an evaluation's test accuracies are measured on.
TEST_SPLITS = ("test", "validation")

_INT_DTYPES = {"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"}
_STRING_DTYPES = {"string", "large_string"}
# A Hub id is "name" or "owner/name"; anything else that is not on disk must be a mistyped local path.
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
    source: str | os.PathLike | datasets.Dataset | datasets.DatasetDict | dict[str, datasets.Dataset]
    | datasets.IterableDataset | datasets.IterableDatasetDict,
    streaming: bool = False,
) -> datasets.DatasetDict | datasets.IterableDatasetDict:
    """Return ``source`` as a DatasetDict: a dataset object, a dict of them, a local folder or a Hub id.

    A ``Dataset`` becomes the split "train". A streaming ``IterableDataset`` (split "train"), ``IterableDatasetDict``
    or dict of them is returned as an ``IterableDatasetDict`` (only the shard writer reads those). Anything else (a
    pandas DataFrame, a list, None, a dict mixing both kinds, ...) is a UgeError naming what is accepted, as is a
    folder or Hub id that does not load. `streaming`: load a folder or Hub id with ``load_dataset(...,
    streaming=True)`` (an ``IterableDatasetDict``); with a dataset object it is a UgeError (pass an
    ``IterableDataset`` itself).
    """
    if streaming and not isinstance(source, (str, os.PathLike)):
        raise UgeError(f"streaming applies to a folder or Hub id; pass the {type(source).__name__} as an IterableDataset"
                       " instead (e.g. ds.to_iterable_dataset())")
    if isinstance(source, (datasets.DatasetDict, datasets.IterableDatasetDict, dict)) and not source:
        raise UgeError("the DatasetDict has no splits: there is nothing to protect")
    if isinstance(source, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        return source
    if isinstance(source, datasets.Dataset):
        return datasets.DatasetDict({"train": source})
    if isinstance(source, datasets.IterableDataset):
        return datasets.IterableDatasetDict({"train": source})
    if isinstance(source, dict) and all(isinstance(v, datasets.Dataset) for v in source.values()):
        return datasets.DatasetDict(source)
    if isinstance(source, dict) and all(isinstance(v, datasets.IterableDataset) for v in source.values()):
        return datasets.IterableDatasetDict(source)
    if not isinstance(source, (str, os.PathLike)):
        maker = {"pandas": "from_pandas", "polars": "from_polars", "list": "from_list", "dict": "from_dict"}
        kind = type(source).__module__.split(".")[0] if type(source).__module__ != "builtins" else type(source).__name__
        hint = f" (make one with datasets.Dataset.{maker[kind]})" if kind in maker else ""
        raise UgeError(
            f"cannot load a dataset from {type(source).__name__}{hint}: pass a datasets.Dataset, a DatasetDict,"
            " an IterableDataset(Dict), a local dataset folder or a Hub id (a dict must hold one kind of split)"
        )

    path = os.path.expanduser(os.fspath(source))
    is_local = os.path.exists(path)
    if not is_local and (isinstance(source, os.PathLike) or not HUB_ID.fullmatch(path) or path.startswith(".")):
        raise UgeError(f"no such file or folder: {path}")
    if os.path.isfile(path):
        raise UgeError(f"{path} is a file: pass the dataset folder that holds it (load_dataset reads folders)")
    try:
        loaded = datasets.load_dataset(path, streaming=streaming)
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
    if not isinstance(loaded, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        raise UgeError(f"'{path}' did not load as a dataset with splits (got {type(loaded).__name__})")
    return loaded


def load_map_style(source) -> datasets.DatasetDict:
    """`load_source` for the readers that index rows (verify's comparison, evaluation): a streaming source is a
    UgeError saying how to materialise it."""
    loaded = load_source(source)
    if isinstance(loaded, datasets.IterableDatasetDict):
        raise UgeError(
            f"a streaming {type(source).__name__} cannot be compared or evaluated row by row: materialise it first,"
            " e.g. load it without streaming=True or build it with Dataset.from_generator"
        )
    return loaded


def source_label(source: str | os.PathLike | datasets.Dataset | datasets.DatasetDict) -> str:
    """How a release names its source: a Hub id as given, a local folder by its name (never its absolute path,
    which is machine-local), a dataset object by its ``info.dataset_name`` (else "dataset")."""
    if isinstance(source, (str, os.PathLike)):
        path = os.path.expanduser(os.fspath(source))
        return os.path.basename(os.path.abspath(path)) if os.path.exists(path) else path
    first = source if isinstance(source, (datasets.Dataset, datasets.IterableDataset)) else next(iter(source.values()), None)
    return getattr(getattr(first, "info", None), "dataset_name", None) or "dataset"


@dataclass(frozen=True)
class SourceMetadata:
    """What a release's card says of its source (the Hub's `pretty_name`, `source_datasets`, `license`)."""

    name: str  # `source_label`: a Hub id, a folder's name or a dataset object's name, never a local path
    hub_id: str | None = None  # the Hub id the source was loaded from; None: a local folder or a dataset object
    license: str | list[str] | None = None  # the source card's `license` (a Hub license id); None: not known


def source_metadata(
    source: str | os.PathLike | datasets.Dataset | datasets.DatasetDict, loaded: datasets.DatasetDict | None = None
) -> SourceMetadata:
    """The source's name, Hub id and license, for the release's card.

    The license is the first found of: the loaded dataset's `info.license`, the `license:` of the source folder's
    README.md, the `license:` of the Hub repo's card (read from the HF cache or the Hub; offline and not cached,
    or unreadable: unknown). `datasets` does not copy a card's `license:` into `info.license`, hence the card.
    Never raises: a license that cannot be read is left out of the card, not a failed release.
    """
    first = next(iter(loaded.values()), None) if loaded else None
    license = getattr(getattr(first, "info", None), "license", None) or None
    hub_id = None
    if isinstance(source, (str, os.PathLike)):
        path = os.path.expanduser(os.fspath(source))
        if not os.path.exists(path):
            hub_id = path  # load_source accepted it, so it is a Hub id
        if license is None:
            license = _card_license(path, hub_id)
    return SourceMetadata(source_label(source), hub_id, license)


def _card_license(path: str, hub_id: str | None) -> str | list[str] | None:
    """`license:` of a local folder's README.md or a Hub dataset's card; None when there is none or it cannot be read."""
    from huggingface_hub import DatasetCard

    try:
        if hub_id is None:
            readme = os.path.join(path, "README.md")
            card = DatasetCard.load(readme) if os.path.isfile(readme) else None
        else:
            card = DatasetCard.load(hub_id)
    except Exception:  # a missing, private or malformed card only costs the card its license line
        return None
    value = getattr(getattr(card, "data", None), "license", None)
    ok = isinstance(value, str) or (isinstance(value, list) and value and all(isinstance(v, str) for v in value))
    return value if ok else None


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


def held_out_split(splits: Iterable[str], exclude: Iterable[str] = (), label_column: str | None = None) -> str | None:
    """The first of `TEST_SPLITS` among `splits` (names, or a `DatasetDict`) and not in `exclude`, or None.

    With `label_column` (and a `DatasetDict`), a split counts only when every row has its label.
    """
    excluded = set(exclude)
    for name in TEST_SPLITS:
        if name in splits and name not in excluded and (label_column is None or has_every_label(splits[name], label_column)):
            return name
    return None


def has_every_label(ds: datasets.Dataset, label_column: str) -> bool:
    """Whether no row lacks its label (None, or ClassLabel's -1): an unlabelled split is only copied."""
    missing = -1 if isinstance(ds.features[label_column], datasets.ClassLabel) else None
    values = ds.with_format("arrow")[label_column].to_pylist()
    return bool(values) and all(value is not None and value != missing for value in values)


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
        disable=not (progress and progress_enabled()),
        console=Console(stderr=True),
    )
    for row, value in rows:
        try:
            pixels = decode_image(value, image_size)
        except (OSError, ValueError, PIL.Image.DecompressionBombError) as e:
            raise _decode_error(row, image_column, e) from e
        images[row] = torch.from_numpy(pixels).permute(2, 0, 1)
    return ClassificationTensors(images=images, labels=labels, class_names=list(class_names), image_size=image_size)


def decode_image(value: dict[str, Any] | None, image_size: tuple[int, int] | None = None) -> np.ndarray:
    """An undecoded image ({"bytes", "path"}, as stored by ``datasets``) -> uint8 H x W x 3 RGB array.

    Stood upright by its EXIF orientation (as ``datasets.Image`` does, so pixels match what users see there),
    colours by ``to_rgb``, resized to ``image_size`` (H, W; None: its own size). Raises OSError / ValueError /
    PIL's DecompressionBombError for an image that cannot be read; callers name the row.
    """
    with _open_image(value) as image:
        image.load()
        if image.getexif().get(PIL.Image.ExifTags.Base.Orientation) is not None:
            image = PIL.ImageOps.exif_transpose(image)
        return prepare_image(image, image_size or (image.height, image.width))


def prepare_image(image: PIL.Image.Image, image_size: tuple[int, int]) -> np.ndarray:
    """Any PIL image -> uint8 H x W x 3 RGB array at ``image_size`` (H, W), resized bicubic if its size differs.

    Colours as ``to_rgb`` reads them. Raises ValueError (the caller names the row) for pixels it cannot read.
    """
    image = to_rgb(image)
    height, width = image_size
    if image.size != (width, height):
        image = image.resize((width, height), resample=PIL.Image.Resampling.BICUBIC)
    return np.array(image, dtype=np.uint8)  # a writable copy, so torch.from_numpy is safe


def to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """Any PIL image -> mode "RGB", 8 bits per channel, as a user looking at its pixels would read them.

    Alpha is dropped, not composited (``convert("RGB")``, as torchvision and transformers do), so transparent
    pixels keep their stored colour; palette, CMYK, YCbCr etc. are converted by PIL. Single-channel images of
    more than 8 bits are decoded by their dtype and range (``datasets`` stores numpy arrays this way):

    - "I;16*" (uint16 arrays, 16-bit PNG/TIFF): scaled by 255 / 65535.
    - "I" (int32; ``datasets`` turns int64/int32 arrays into it): values in 0..255 are 8-bit levels and kept;
      values in 0..65535 are 16-bit and scaled by 255 / 65535. Negative or larger values: ValueError.
    - "F" (float32 arrays): values in [0, 1] are scaled by 255; values in [0, 255] are levels and kept.
      NaN, infinities, negative or larger values: ValueError.

    The range is that of the one image: a 16-bit image stored as int64 whose brightest pixel is <= 255 reads
    as 8-bit. Levels are rounded to the nearest integer.
    """
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        values = np.asarray(image).astype(np.float64)
        if not np.isfinite(values).all():
            raise ValueError(f"the {image.mode} image has NaN or infinite pixels")
        low, high = (values.min(), values.max()) if values.size else (0.0, 0.0)
        if image.mode == "F" and low >= 0 and high <= 1:
            scale = 255.0
        elif low >= 0 and high <= 255 and not image.mode.startswith("I;16"):
            scale = 1.0
        elif low >= 0 and high <= 65535 and image.mode != "F":
            scale = 255.0 / 65535.0
        else:
            expected = "[0, 1] or [0, 255]" if image.mode == "F" else "0..255 or 0..65535"
            raise ValueError(f"the {image.mode} image has pixels from {low:g} to {high:g}; expected {expected}")
        image = PIL.Image.fromarray(np.rint(values * scale).clip(0, 255).astype(np.uint8))
    return image if image.mode == "RGB" else image.convert("RGB")


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
