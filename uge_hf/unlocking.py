"""The key holder's side of a lock release: the exact source images back, as a `datasets.DatasetDict`.

    release (x_u + unlock blobs) --key--> source images, bit for bit (as `protect` decoded them: RGB, the card's size)

Each protected row's blob is opened with the key and checked against the row's pixels and label (`uge_hf.lock`);
a wrong key or a changed row is a UgeError naming the split and row. Splits nobody protected come back as they are.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from datasets import Dataset, DatasetDict

from .errors import UgeError
from .progress import library_bars
from .keyfile import KEY_FILE

UNLOCK_BATCH = 256


@library_bars()
def unlock(release: str | os.PathLike | Dataset | DatasetDict, key: str | os.PathLike, *, revision: str | None = None,
           on_the_fly: bool = False, transform: Callable[[dict], dict] | None = None,
           card: str | os.PathLike | None = None) -> DatasetDict | Dataset:
    """The release's splits with every protected image replaced by its source image and the `unlock` column dropped.

    Args:
        release: a lock release folder or Hub id; or a `Dataset`/`DatasetDict` loaded from one (shuffled, selected,
            filtered, split, cast, formatted: its image, label and unlock columns as the release stores them),
            with `card` naming the release (its card holds the key's hash, the columns and the classes). A
            `Dataset` comes back as a `Dataset`.
        key: the publisher's `key.json`, or the private folder holding it.
        revision: Hub revision of the release.
        on_the_fly: unlock rows as they are read (`Dataset.set_transform`), for data too large to unlock up front;
            images then come back as PIL images and errors surface when a bad row is read. The unlock *is* the
            split's format: `with_format("torch")`, `set_format`, `set_transform`, `to_list` or `to_pandas` read
            the released (poisoned) images instead; pass your own conversion as `transform`.
        transform: a `set_transform` function (batch dict -> batch dict) applied to every split as it is read,
            after the unlock with `on_the_fly` (e.g. PIL images to tensors for a DataLoader).
        card: with a loaded `release`, the release folder or Hub id it was loaded from.

    Returns: a `DatasetDict` of every split in the release; images as `datasets.Image` (PNG, lossless).

    Raises: UgeError if the release is not a lock release, the key is not its key, or a row does not unlock.
    """
    from .card import read_card
    from .fetch import fetch_release
    from .layout import load_release

    loaded = isinstance(release, (Dataset, DatasetDict))
    if loaded and card is None:
        raise UgeError("a loaded dataset carries no card: pass card= the release folder or Hub id it was loaded from")
    if not loaded and card is not None:
        raise UgeError("card= is for a loaded dataset; a release folder or Hub id has its own card")
    if not loaded and not isinstance(release, (str, os.PathLike)):
        raise UgeError(f"cannot unlock a {type(release).__name__}: pass a lock release folder or Hub id, or a"
                       " Dataset/DatasetDict loaded from one with card=")
    folder = fetch_release(card if loaded else release, revision)
    uge = read_card(folder)
    opener = RowUnlocker.from_card(uge, key)
    if loaded:
        return _unlock_loaded(release, uge, opener, on_the_fly, transform)
    splits = load_release(folder)
    info = _card_info(folder)
    for name in [name for name in uge.protected_splits if name in splits]:
        opener._check_columns(splits[name], name)  # here, not as a KeyError at the first row read on the fly
        if info is None:
            continue
        rows = info.splits[name].num_examples if name in (info.splits or {}) else None
        # every blob opens on its own, so a deleted (or duplicated) row would go unnoticed: the card counts them
        if rows is not None and splits[name].num_rows != rows:
            raise UgeError(f"split {name} of the release has {splits[name].num_rows} rows, its card says {rows}: rows"
                           " were deleted or added (`uge-hf verify` names the shards)")
        if info.features is not None and splits[name].features != info.features:
            # shards rewritten by another tool (pandas, pyarrow) lose datasets' feature metadata: images come back as
            # {bytes, path} dicts and a ClassLabel as plain ints; the card says what they are
            try:
                splits[name] = splits[name].cast(info.features)
            except (ValueError, TypeError, KeyError, NotImplementedError) as e:  # pyarrow's cast errors
                raise UgeError(f"split {name} of the release does not have the card's features ({e})") from None
    out = {}
    for name, split in splits.items():
        if name not in uge.protected_splits:
            split = split.remove_columns([c for c in (opener.unlock_column,) if c in split.column_names])
        elif on_the_fly:
            split = split.with_format(None)
            # one transform: a second set_transform (or with_format) would replace the unlock, not follow it
            split.set_transform(opener.transform(name, split.features[opener.label_column], transform))
            out[name] = split
            continue
        else:
            split = opener.unlock_split(split, name)
        if transform is not None:
            split.set_transform(transform)
        out[name] = split
    return DatasetDict(out)


def _unlock_loaded(release, uge, opener: RowUnlocker, on_the_fly: bool, transform):
    """`unlock` of a Dataset/DatasetDict loaded from the release: any row subset or order (each blob is bound to its
    row's content, not its position), so no row count is checked; every split holding unlock data is unlocked."""
    from datasets import Image

    single = isinstance(release, Dataset)
    splits = {"dataset": release} if single else dict(release)
    out = {}
    for name, split in splits.items():
        split = split.with_format(None)  # torch/numpy formats or a transform would hand the cipher other values
        if opener.unlock_column not in split.column_names or (
                not single and name not in uge.protected_splits and not any(split[opener.unlock_column])):
            split = split.remove_columns([c for c in (opener.unlock_column,) if c in split.column_names])
        else:
            opener._check_columns(split, name)
            if split.features[opener.image_column] != Image():  # e.g. cast to Image(decode=False)
                split = split.cast_column(opener.image_column, Image())
            if on_the_fly:
                split.set_transform(opener.transform(name, split.features[opener.label_column], transform))
                out[name] = split
                continue
            split = opener.unlock_split(split, name)
        if transform is not None:
            split.set_transform(transform)
        out[name] = split
    return out["dataset"] if single else DatasetDict(out)


def _card_info(folder: Path):
    """The card's `dataset_info` (features, rows per split) as a `datasets.DatasetInfo`, or None if it has none."""
    from datasets.info import DatasetInfosDict
    from huggingface_hub import DatasetCard

    try:
        infos = DatasetInfosDict.from_dataset_card_data(DatasetCard.load(Path(folder) / "README.md").data)
    except Exception:  # the card was read (and checked) by read_card already; dataset_info is optional there
        return None
    return infos.get("default") or next(iter(infos.values()), None)


class RowUnlocker:
    """Opens the rows of one lock release with one key (from the card's `uge:` block and the key file)."""

    def __init__(self, key, image_column: str, label_column: str, unlock_column: str, class_names: list[str]):
        # plain bytes, not the cipher object: the unlocker (and a set_transform holding it) pickles, as DataLoader
        # workers and datasets' fingerprinting need
        self.cipher_key = key.cipher_key
        self.key_fingerprint = key.fingerprint
        self.image_column, self.label_column, self.unlock_column = image_column, label_column, unlock_column
        self.class_names = list(class_names)

    @property
    def cipher(self):
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        return AESGCM(self.cipher_key)

    @classmethod
    def from_card(cls, card, key: str | os.PathLike) -> RowUnlocker:
        """The unlocker of the release whose checked card (`uge_hf.card.UgeBlock`) is `card`, with `key`."""
        from .lock import load_lock_key

        if card.method != "lock":
            raise UgeError(f"this release was made with the {card.method} method; only a lock release unlocks")
        lock = card.method_fields["lock"]
        lock_key = load_lock_key(Path(key), len(card.class_names))
        if lock_key.fingerprint != lock["key_sha256"]:
            raise UgeError(f"the key {key} is not this release's key (its sha256 is not the card's"
                           f" {lock['key_sha256'][:16]}...)")
        return cls(lock_key, card.image_column, card.label_column, lock["unlock_column"], card.class_names)

    def unlock_images(self, images: list, labels: list, blobs: list[bytes], where: Callable[[int], str],
                      feature) -> list:
        """Source images (PIL, RGB) of released PIL `images`, their stored labels and unlock blobs.

        `feature`: the label column's feature in the release (a ClassLabel's ints index its names; other labels
        name their class themselves), to find the class index each blob is bound to.
        """
        from PIL import Image

        from .lock import unlock_pixels

        out, cipher, index_of = [], self.cipher, label_indexer(self.class_names, feature)
        for offset, (image, label, blob) in enumerate(zip(images, labels, blobs, strict=True)):
            pixels = np.asarray(image.convert("RGB")).transpose(2, 0, 1)
            source = unlock_pixels(cipher, pixels, index_of(label, where(offset)), blob, where(offset))
            out.append(Image.fromarray(np.ascontiguousarray(source.transpose(1, 2, 0))))
        return out

    def unlock_split(self, split: Dataset, name: str) -> Dataset:
        """`split` with its images unlocked (written as PNG) and the unlock column dropped."""
        self._check_columns(split, name)

        def batch_unlock(batch: dict, indices: list[int]) -> dict:
            batch[self.image_column] = self.unlock_images(
                batch[self.image_column], batch[self.label_column], batch[self.unlock_column],
                lambda offset: f"{name} row {indices[offset]}", split.features[self.label_column])
            return batch

        return split.map(batch_unlock, batched=True, batch_size=UNLOCK_BATCH, with_indices=True,
                         remove_columns=[self.unlock_column], desc=f"unlocking {name}", load_from_cache_file=False,
                         new_fingerprint=hashlib.sha256(f"{split._fingerprint} {self.key_fingerprint}".encode()).hexdigest()[:32])

    def transform(self, name: str, feature, then: Callable[[dict], dict] | None = None) -> Callable[[dict], dict]:
        """A `set_transform` function unlocking each batch as it is read (row numbers unknown: named by label).

        `feature`: the label column's feature in the release (see `unlock_images`); `then`: applied after."""
        return _UnlockTransform(self, name, feature, then)

    def _check_columns(self, split: Dataset, name: str) -> None:
        missing = [c for c in (self.image_column, self.label_column, self.unlock_column) if c not in split.column_names]
        if missing:
            raise UgeError(f"split {name} of the release has no column {', '.join(missing)}: it cannot be unlocked")


def label_indexer(class_names: list[str], feature=None) -> Callable[[object, str], int]:
    """(stored label, where) -> the class index protect bound the row's blob to (the card's `class_names` order).

    protect encodes labels to class indices (`uge_hf.data.class_names_and_encoder`): a ClassLabel's ints index its
    names, integer labels are named `str(value)` and ranked, strings name themselves. A release keeps the stored
    labels, so the ints 3, 7, 11 or the strings "cat", "dog" must be mapped back before the binding is computed.
    """
    from datasets import ClassLabel

    index = {name: i for i, name in enumerate(class_names)}
    names = feature.names if isinstance(feature, ClassLabel) else None

    def index_of(label, where: str) -> int:
        integer = isinstance(label, (int, np.integer)) and not isinstance(label, bool)
        name = names[label] if names is not None and integer and 0 <= label < len(names) else str(label)
        if name not in index and names is not None and name.isdigit() and int(name) < len(names):
            name = names[int(name)]  # a ClassLabel cast to strings ("0", "1", ...) on the fly
        if name not in index:
            raise UgeError(f"{where}: its label {label!r} is none of the card's {len(class_names)} classes")
        return index[name]

    return index_of


class _UnlockTransform:
    """A picklable `set_transform` callable (datasets fingerprints a transform by pickling it)."""

    def __init__(self, unlocker: RowUnlocker, name: str, feature, then: Callable[[dict], dict] | None = None):
        self.unlocker, self.name, self.feature, self.then = unlocker, name, feature, then

    def __call__(self, batch: dict) -> dict:
        from datasets import Image

        u = self.unlocker
        if u.unlock_column not in batch or u.image_column not in batch or u.label_column not in batch:
            raise UgeError(f"split {self.name} unlocks on the fly from its columns {u.image_column}, {u.label_column} "
                           f"and {u.unlock_column}: keep them (unlock without on_the_fly to drop columns)")
        images = [Image().decode_example(value) for value in batch[u.image_column]]
        labels = batch[u.label_column]
        try:
            batch[u.image_column] = u.unlock_images(
                images, labels, batch.pop(u.unlock_column),
                lambda offset: f"a {self.name} row (label {labels[offset]}) read on the fly", self.feature)
        except UgeError as e:
            # the stored rows are the released ones: a `map` that returns the image or label column, or
            # `flatten_indices`, writes unlocked images or new labels beside the old blobs, which then no longer open
            raise UgeError(f"{e} (on the fly, a map that rewrote the image or label column, or flatten_indices, does"
                           " that: unlock without on_the_fly to transform the images)") from None
        return batch if self.then is None else self.then(batch)


def write_unlocked(release: str | os.PathLike, key: str | os.PathLike, output_dir: str | os.PathLike, *,
                   revision: str | None = None, overwrite: bool = False) -> Path:
    """Unlock `release` and write it to `output_dir` as parquet shards that `datasets.load_dataset` reads.

    Written in a staging folder and moved into place in one rename: a failure (a wrong key, a changed row) leaves
    nothing behind. Returns the folder.
    """
    import shutil

    from .fetch import fetch_release
    from .files import check_output_dir, replace_folder

    output = check_output_dir(output_dir, overwrite).resolve()
    folder = fetch_release(release, revision)
    _check_apart(output, folder.resolve(), Path(key).expanduser().resolve())
    unlocked = unlock(folder, key)  # fails on a bad key or row before anything is written
    staging = output.parent / f".{output.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        (staging / "data").mkdir(parents=True)
        for name, split in unlocked.items():
            # every image is bytes already (unlocked images are encoded by `map`; copied splits come from the
            # release, which embeds them): the shards stand alone
            split.to_parquet(str(staging / "data" / f"{name}-00000-of-00001.parquet"))
        replace_folder(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output


def _check_apart(output: Path, release: Path, key: Path) -> None:
    """Refuse an output that would destroy the release or the key (`--overwrite` replaces the whole output folder),
    or put the clean images inside the release folder (where a later `push` or `load_dataset` of it would find them)."""
    if output == release or output in release.parents:
        raise UgeError(f"the output {output} is the release folder or holds it: --overwrite would delete the release;"
                       " choose a folder outside it")
    if release in output.parents:
        raise UgeError(f"the output {output} is inside the release folder {release}: the clean images would be"
                       " published with it; choose a folder outside the release")
    key_file = key / KEY_FILE if key.is_dir() else key
    if output == key_file.parent or output in key_file.parents:
        raise UgeError(f"the output {output} holds the key {key_file}: writing there would delete it; choose another"
                       " folder")
