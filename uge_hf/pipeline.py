"""`protect()`: from an HF dataset to a release folder (and its private folder), and nothing else.

    data (columns, class names, the first protected split decoded) -> method (uge_hf.methods) -> release + private

The method computes the protected images and what the card and the private folder hold; this module writes them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset, DatasetDict, Image, IterableDataset, IterableDatasetDict
from torch import Tensor

from .version import __version__
from .apply import perturbation_stats, preview_grid
from .card import AuthorizedEntry, InputTransform, PerturbationStats, Results, UgeBlock
from .config import KEY_METHODS, ProtectConfig
from .data import held_out_split, load_source, resolve_columns, source_metadata, to_pil_images, to_tensors
from .errors import UgeError
from .files import json_bytes, portable
from .methods import MethodInput, MethodResult, get_method
from .private import private_dir_for, write_private
from .progress import is_main_process, library_bars
from .release import check_output_dir, write_release
from .inputs import INPUT_MEAN, INPUT_STD
from .validate import validate_splits, validate_stream


@library_bars()
def protect(
    dataset: str | os.PathLike | Dataset | DatasetDict,
    authorized: str | list[str] | None = None,
    output_dir: str | os.PathLike | None = None,
    *,
    config: ProtectConfig | None = None,
    overwrite: bool = False,
    streaming: bool = False,
    **options,
) -> ProtectResult | None:
    """Protect `dataset` so that only the `authorized` network(s) learn well from it.

    Args:
        dataset: a `Dataset`, a `DatasetDict`, a local folder or a Hub id of an image-classification dataset.
        authorized: one or more specs `ARCH[-wWIDTH]-seedN` (default `resnet18-seed0`).
        output_dir: where to write the release folder; None returns the protected dataset without writing one.
            Key material (the keyed method's key and authorized weights) goes to `OUTPUT.private/` beside it,
            never into the release.
        config: a full `ProtectConfig` (used as it is: validated when it was made); `authorized` and `options` (any
            of its fields) override it, and the result is validated again.
        overwrite: replace a non-empty `output_dir` (and its private folder).
        streaming: read a folder or Hub id `dataset` as a streaming `IterableDatasetDict` (`load_dataset(...,
            streaming=True)`); an `IterableDataset(Dict)` passed as `dataset` is streaming already. A streaming source
            needs `shard_rows` and a per-row method (keyed, lock): rows are read in order, `shard_rows` at a time,
            checked per shard (a bad row is a UgeError naming it, nothing written), and the release is byte for byte
            the one of the same rows loaded map-style.

    Returns:
        A `ProtectResult`: the protected `DatasetDict`, the card's `uge:` block (`UgeBlock`, as written), and the
        release and private folders (None where none was written). For a streaming source the splits are an
        `IterableDatasetDict` read from the release's shards. Other processes of a multi-process run get None.
        (Before 0.2 this returned the `DatasetDict` alone: `result["train"]` still works, with a DeprecationWarning;
        use `result.dataset["train"]`.)
    """
    if config is None or options or authorized is not None:  # a config alone was validated when it was made
        values = config.to_dict() if config is not None else {}
        values.update(options)
        if authorized is not None:
            values["authorized"] = authorized
        config = ProtectConfig.from_dict(values)

    if output_dir is None and config.shard_rows is not None:
        raise UgeError("shard_rows writes the release shard by shard: give an output folder")
    if output_dir is None and config.method in KEY_METHODS and config.key_file is None:
        raise UgeError(f"the {config.method} method needs an output folder: its key is written to OUTPUT.private/"
                       " beside it (or pass key_file= to protect with an existing key)")
    if output_dir is None and config.method == "gradient-matching" and not config.publish_authorized:
        raise UgeError("the authorized weights go to OUTPUT.private/ beside the release: give an output folder, or"
                       " publish_authorized=True to make them public")
    output = check_output_dir(output_dir, overwrite) if output_dir is not None else None
    private = check_output_dir(private_dir_for(output), overwrite) if output is not None else None
    splits = load_source(dataset, streaming=streaming)
    source = source_metadata(dataset, splits)
    missing = [split for split in config.splits if split not in splits]
    if missing:
        raise UgeError(f"no split named {', '.join(missing)} in the dataset; it has {', '.join(splits)}")

    fit_split = splits[config.splits[0]]
    streaming = isinstance(splits, IterableDatasetDict)
    if streaming:
        _check_streaming(config, fit_split)
    image_column, label_column = resolve_columns(fit_split, config.image_column, config.label_column)
    if config.method == "lock":  # the release adds this column: say so now, not after locking every row
        from .methods.lock import check_no_unlock_column

        for name in config.splits:
            check_no_unlock_column(list(splits[name].features), name)
    if streaming:  # rows are unknown up front: labels and images are checked shard by shard as they are read
        class_names, image_size = validate_stream(splits, config, image_column, label_column)
    else:
        class_names, image_size = validate_splits(splits, config, image_column, label_column)
    if config.shard_rows is not None:  # a per-row method, shard by shard: no split is held in memory
        from .sharded import protect_sharded

        done = protect_sharded(splits, config, image_column, label_column, class_names, image_size, output, private,
                               source)
        return ProtectResult(*done) if done is not None else None
    clean = to_tensors(fit_split, image_column, label_column, image_size, class_names, progress=is_main_process())

    work_dir = output.parent / f"{output.name}.uge-work" if output is not None else None
    inputs = MethodInput(config, splits, clean, image_column, label_column, work_dir)
    result = get_method(config.method).protect(inputs)

    outcome = None
    if result.resolved:  # what the run actually used, for the card and uge_config.json
        config = dataclasses.replace(config, **result.resolved)
    if is_main_process():
        released = _released_splits(splits, config, result.protected, image_column, result.columns)
        card = _card_block(config, inputs, result, splits)
        written = private if output is not None and result.private_files else None
        if output is not None:
            card = UgeBlock.from_dict(portable(card.to_dict()))  # as the release's README.md holds it
            files = {"uge_config.json": json_bytes(config.public_dict()), **result.public_files}
            first = config.splits[0]
            preview = preview_grid(clean.images, result.protected[first])
            with write_private(private, result.private_files):
                output = write_release(output, released, card, source, files, preview, config.num_shards,
                                       overwrite, original=splits)
        outcome = ProtectResult(released, card, output, written.resolve() if written is not None else None)
    result.barrier()
    if is_main_process() and result.work_dir is not None:
        shutil.rmtree(result.work_dir, ignore_errors=True)
    return outcome


def _check_streaming(config: ProtectConfig, fit: IterableDataset) -> None:
    """A streaming source goes through the shard writer of a per-row method, or not at all: one-line UgeErrors."""
    if config.method not in ("keyed", "lock"):
        raise UgeError(f"the {config.method} method trains on the whole split before protecting a row, so it cannot"
                       " read a streaming source: pass a map-style Dataset (load without streaming=True, or a sample:"
                       " Dataset.from_list(list(ds.take(N)))), or use --method keyed / lock")
    if config.shard_rows is None:
        raise UgeError("a streaming source is protected shard by shard: pass shard_rows=N (rows per parquet shard,"
                       " e.g. 1000)")
    if fit.features is None:
        raise UgeError("the streaming split's features are unknown (datasets could not infer them): give them, e.g."
                       " load_dataset(..., streaming=True, features=...) or ds.cast(features)")


@dataclass(frozen=True)
class ProtectResult:
    """What `protect()` made: the protected splits, the card's block, and where they were written."""

    # the released splits: protected ones with their new images, the others as configured (an IterableDatasetDict
    # read from the release's shards when the source was streaming)
    dataset: DatasetDict | IterableDatasetDict
    card: UgeBlock  # the `uge:` block (written to release_dir/README.md when there is a release folder)
    release_dir: Path | None  # the release folder (absolute); None when protect() was given no output_dir
    private_dir: Path | None  # OUTPUT.private/ (key, authorized weights); None when the method wrote nothing private

    def __getitem__(self, split: str) -> Dataset:
        """`result[split]`, as when protect() returned the `DatasetDict` itself (deprecated: `result.dataset[split]`)."""
        warnings.warn("protect() returns a ProtectResult: use result.dataset[split]", DeprecationWarning, stacklevel=2)
        return self.dataset[split]


def _released_splits(splits: DatasetDict, config: ProtectConfig, protected: dict[str, Tensor], image_column: str,
                     columns: dict[str, dict[str, list]]) -> DatasetDict:
    """Protected splits with their new images (and the method's added columns); the others copied unchanged (or dropped)."""
    released = {}
    for name, split in splits.items():
        if name in protected:
            released[name] = _replace_images(split, image_column, protected[name])
            for column, values in columns.get(name, {}).items():
                if column in released[name].column_names:
                    raise UgeError(f"the {config.method} method adds a column {column!r}, but split {name} already"
                                   " has one: rename it in the source")
                released[name] = released[name].add_column(column, values, new_fingerprint=_fingerprint(values))
        elif config.keep_other_splits:
            released[name] = split
    added = {column: feature for name in protected for column, feature in released[name].features.items()
             if column in columns.get(name, {})}
    for name, split in released.items():  # every split shares one schema: rows nobody protected hold null there
        for column, feature in added.items():
            if column not in split.column_names:
                split = split.add_column(column, [None] * len(split), new_fingerprint=f"{split._fingerprint}-{column}-null")
                released[name] = split = split.cast_column(column, feature)
    return DatasetDict(released)


def _replace_images(split: Dataset, image_column: str, images: Tensor) -> Dataset:
    """`split` with its image column replaced by `images` (PNG, lossless); every other column untouched."""
    features = split.features.copy()
    features[image_column] = Image()

    def replace(batch: dict, indices: list[int]) -> dict:
        batch[image_column] = to_pil_images(images[indices])
        return batch

    return split.cast_column(image_column, Image(decode=False)).map(
        replace, batched=True, with_indices=True, features=features,
        new_fingerprint=hashlib.sha256(images.numpy().tobytes()).hexdigest()[:32],
        load_from_cache_file=False, desc=f"writing protected {image_column}",
    )


def _fingerprint(values) -> str:
    """A datasets fingerprint from the content (the default would hash the Python objects more slowly)."""
    digest = hashlib.sha256()
    for value in values:
        digest.update(value if isinstance(value, bytes) else repr(value).encode())
    return digest.hexdigest()[:32]


def _card_block(config: ProtectConfig, inputs: MethodInput, result: MethodResult, splits: DatasetDict) -> UgeBlock:
    """The card's machine-readable `uge:` block: what was declared, how it was made, what was measured."""
    clean = inputs.fit
    first = config.splits[0]
    test_split = held_out_split(splits, config.splits, inputs.label_column) if config.keep_other_splits else None
    return UgeBlock(
        uge_hf_version=__version__,
        method=config.method,
        # a method may hand back plain mappings: they are checked here, as a card's entries are when read
        authorized=[net if isinstance(net, AuthorizedEntry) else AuthorizedEntry.from_dict(net, i)
                    for i, net in enumerate(result.authorized)],
        recipe=config.recipe,
        input=InputTransform(tuple(clean.image_size), INPUT_MEAN, INPUT_STD),
        rho=config.rho,
        pixel_bound=config.pixel_bound,
        method_fields=dict(result.card),
        seed=config.seed,
        protected_splits=list(config.splits),
        columns={"image": inputs.image_column, "label": inputs.label_column},
        class_names=list(clean.class_names),
        results=Results(
            perturbation={first: PerturbationStats(**perturbation_stats(clean.images, result.protected[first]))},
            test_split=test_split,
            method_results={k: v for k, v in result.results.items() if k not in ("perturbation", "test_split")},
        ),
        config=config.public_dict(),
    )
