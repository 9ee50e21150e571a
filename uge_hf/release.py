"""Writing a release folder atomically: parquet shards, card, authorized initial weights, preview, config.

Layout (what `datasets.load_dataset(folder)` and the Hub read unchanged):

    README.md                          dataset card with the `uge:` YAML block
    data/{split}-0000i-of-0000n.parquet
    authorized/{spec}.safetensors      initial weights; sha256 of this file == the card's init_sha256
    authorized/{spec}.json             how to rebuild the network (arch, width, seed, classes, input transform)
    preview.png                        original / amplified noise / protected
    uge_config.json                    the ProtectConfig of the run
    generator.safetensors              only with release_generator=True
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

from datasets import Dataset, DatasetDict, DatasetInfo, Features, SplitDict, SplitInfo
from datasets import Image as ImageFeature
from datasets.table import embed_table_storage
from PIL import Image

from .card import UgeBlock, render_card
from .data import SourceMetadata
from .errors import UgeError
from .files import check_output_dir, json_bytes, portable, replace_folder  # noqa: F401 (check_output_dir: importable from here as before)

SHARD_BYTES = 500 * 2**20


def write_release(
    output_dir: str | Path,
    dataset: DatasetDict,
    uge: UgeBlock,
    source: str | SourceMetadata,
    files: dict[str, bytes],
    preview: Image.Image,
    num_shards: int | None = None,
    overwrite: bool = False,
    original: DatasetDict | None = None,
) -> Path:
    """Write everything into a staging folder beside `output_dir`, then move it into place in one rename.

    The release stands alone: every image of every split (protected or copied) is embedded as bytes, file paths
    are cut to their names, the splits share the first split's features (plain `Image()` columns), and absolute
    paths in the card and the JSON `files` are cut to their last component (`portable`). The card (`uge` block,
    prose about `source`: its name, or a `SourceMetadata` whose license and Hub id
    the card keeps) is rendered once the shards exist, since it records their sizes. `files` maps
    release-relative paths to their bytes (weights, configs). With `original` (the source splits), every
    protected pixel and every label is re-read from the staged shards and checked against it
    (`verify.check_against_source`): a failure is a UgeError and nothing is moved into place. A run that fails
    midway leaves no half-written release and no staging folder.
    """
    output = check_output_dir(output_dir, overwrite).resolve()
    staging = output.parent / f".{output.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        if isinstance(source, str):
            source = SourceMetadata(source)
        source = dataclasses.replace(source, name=portable(source.name))
        _stage(staging, dataset, portable(uge.to_dict()), source, files, preview, num_shards)
        if original is not None:
            from .verify import check_against_source

            failed = [check for check in check_against_source(staging, original) if not check.ok]
            if failed:
                raise UgeError(
                    "the release failed its re-check against the source and was not written: "
                    + "; ".join(map(str, failed))
                )
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

    return replace_folder(staging, output)


def _stage(staging: Path, dataset: DatasetDict, uge: dict, source: SourceMetadata, files: dict[str, bytes],
           preview: Image.Image, num_shards: int | None) -> None:
    """The release's files, in `staging`."""
    (staging / "data").mkdir(parents=True)
    features = Features({name: ImageFeature() if isinstance(feature, ImageFeature) else feature
                         for name, feature in next(iter(dataset.values())).features.items()})
    info = DatasetInfo(features=features, splits=SplitDict(), download_size=0)
    for split, ds in dataset.items():
        ds = standalone(ds, features)
        shards = num_shards or max(1, math.ceil(ds.data.nbytes / SHARD_BYTES))
        for index in range(shards):
            path = staging / "data" / f"{split}-{index:05d}-of-{shards:05d}.parquet"
            ds.shard(num_shards=shards, index=index, contiguous=True).to_parquet(str(path))
            info.download_size += path.stat().st_size
        info.splits.add(SplitInfo(split, num_bytes=ds.data.nbytes, num_examples=ds.num_rows))
    info.dataset_size = sum(split.num_bytes for split in info.splits.values())
    for relative, content in files.items():
        path = staging / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if relative.endswith(".json") and portable(json.loads(content)) != json.loads(content):
            content = json_bytes(portable(json.loads(content)))
        path.write_bytes(content)
    preview.save(staging / "preview.png", format="PNG")
    render_card(uge, info, source.name, license=source.license, hub_id=source.hub_id).save(str(staging / "README.md"))


def standalone(ds: Dataset, features: Features) -> Dataset:
    """`ds` cast to `features`, with every file its images point to embedded as bytes and each path cut to its
    file name (as `push_to_hub` uploads a dataset): a local file's path is machine-local and goes stale.

    Raises UgeError naming the file when one cannot be read.
    """
    if ds.features != features:
        ds = ds.cast(features)
    try:
        embedded = ds.with_format("arrow").map(embed_table_storage, batched=True, desc="embedding images")
    except OSError as e:
        raise UgeError(f"an image file of the dataset cannot be read to embed it in the release: {e}") from None
    return embedded.with_format(**ds.format)
