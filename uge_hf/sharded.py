"""The per-row methods (keyed, lock), written shard by shard (`ProtectConfig.shard_rows`): memory bounded by one
shard, a killed run resumes at shard granularity, the ranks of `torchrun` / `accelerate launch` share the shards,
and the source may be a streaming `IterableDataset`.

    split rows [i * shard_rows, (i + 1) * shard_rows) --decode, protect (the method's `*Rows.protect`), PNG, embed-->
        data/{split}-{i:05d}-of-{n:05d}.parquet (+ its statistics, re-checked against its source rows)
    rank 0, once every shard exists: card (dataset_info from the shards), preview, uge_config.json, private folder,
    then the staging folder moved into place in one rename

The lock method pads every unlock blob to one length, the longest packed residual of the release: a first pass
(`LockRows.longest`, no encryption, no PNG) finds it and records it per shard in the work folder, so a resumed run
skips it.

The shard layout depends only on `shard_rows` and the row order, and every row's protection only on the key and its
row index, so any number of processes (and any resume) gives the same bytes as one process, and a streaming source
the bytes of the same rows loaded map-style. Ranks are read from `RANK` / `WORLD_SIZE` (what both launchers export);
shard i (numbered across the written splits) goes to rank i % WORLD_SIZE and rank 0 waits for the others' shards on
the shared filesystem (no process group needed). The run's key, drawn by rank 0 (or `key_file`), waits in the work
folder (owner-only) until the private folder is written: a resumed run reuses it.

Streaming sources: every rank reads the whole stream in order and decodes only its own shards (the others are
skipped undecoded). `datasets.distributed.split_dataset_by_node` is not used: it hands a rank whole source files
(when their number is a multiple of WORLD_SIZE) or every WORLD_SIZE-th row, never the global index of a row, and
the protection of a row and the shard it lands in are functions of that index; splitting by node would make the
release depend on the number of processes. What is not here yet: docs/streaming-plan.md.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from datasets import (ClassLabel, Dataset, DatasetDict, DatasetInfo, Features, IterableDataset, IterableDatasetDict,
                      SplitDict, SplitInfo)
from datasets import Image as ImageFeature

from .card import AuthorizedEntry, InputTransform, PerturbationStats, Results, UgeBlock, render_card
from .config import ProtectConfig
from .data import TEST_SPLITS, SourceMetadata, decode_image, to_pil_images, to_tensors
from .errors import UgeError
from .files import atomic_write, json_bytes, portable, replace_folder
from .inputs import INPUT_MEAN, INPUT_STD
from .private import write_private
from .progress import progress_bar, quiet_libraries
from .release import standalone
from .validate import check_shard
from .version import __version__

WAIT_SECONDS = 0.5  # how often rank 0 looks for the other ranks' shards (and the others for the run's key)
# rank 0 gives up when no awaited file appeared for this long (a rank died): a UgeError, the finished shards kept
STALL_SECONDS = 1800
PREVIEW_ROWS = 8


def protect_sharded(splits, config: ProtectConfig, image_column: str, label_column: str,
                    class_names: list[str], image_size: tuple[int, int], output: Path, private: Path,
                    source: SourceMetadata) -> tuple[DatasetDict | IterableDatasetDict, UgeBlock, Path, Path] | None:
    """Write the release of `splits` (a `DatasetDict`, validated, or an `IterableDatasetDict`, whose rows are
    validated shard by shard) with a per-row method into `output`, its key material into `private`.

    Returns (released splits read back from the shards: a `DatasetDict`, or for a streaming source an
    `IterableDatasetDict`; the card's block; output; private) on rank 0, None on the other ranks. Raises UgeError
    when a row of a streaming split fails its check (naming split and row), when a protected split is empty, when
    another rank stopped on one, or when a written shard fails its re-check against its source rows; nothing is
    moved into place then, and the finished shards stay in the work folder for a rerun.
    """
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    work = output.parent / f"{output.name}.uge-work"
    try:
        return _protect_sharded(splits, config, image_column, label_column, class_names, image_size, output, private,
                                source, rank, world, work)
    except UgeError as e:  # the other ranks, waiting for this rank's files, stop with this message at once
        if work.is_dir() and world > 1:
            atomic_write(work / f"failed-rank{rank}.txt", lambda partial: partial.write_text(str(e)))
        raise


def _protect_sharded(splits, config: ProtectConfig, image_column: str, label_column: str, class_names: list[str],
                     image_size: tuple[int, int], output: Path, private: Path, source: SourceMetadata, rank: int,
                     world: int, work: Path) -> tuple[DatasetDict | IterableDatasetDict, UgeBlock, Path, Path] | None:
    from .methods import get_method
    from .methods.base import chunk_rows

    rows_method = get_method(config.method).ROWS
    staging, stats_dir = work / "release", work / "shards"
    written = [name for name in splits if name in config.splits or config.keep_other_splits]
    streaming = any(isinstance(splits[name], IterableDataset) for name in written)
    run = {"config": config.public_dict(), "key_file": config.key_file,
           "rows": {n: None if streaming else splits[n].num_rows for n in written},
           "image_size": list(image_size), "class_names": class_names, "uge_hf_version": __version__}
    key = _run_key(work, run, rank, lambda: rows_method.draw_key(config, len(class_names), image_size),
                   lambda path: rows_method.load_key(path, len(class_names)))
    stats_dir.mkdir(parents=True, exist_ok=True)
    features = Features({name: ImageFeature() if isinstance(feature, ImageFeature) else feature
                         for name, feature in splits[written[0]].features.items()})
    features[image_column] = ImageFeature()
    features.update(rows_method.columns)
    check = (lambda name, start, part: check_shard(name, part, start, image_column, label_column, class_names,
                                                   config.splits[0], protected=name in config.splits)) if streaming else None
    shards = _Shards(splits, config.shard_rows, rank, world, config.splits[0], check)
    chunk = chunk_rows(image_size)

    longest, first_rows = None, None
    if rows_method.needs_longest:  # lock: the longest packed residual of every protected row, before any shard
        finder = rows_method(config, key, image_size, num_classes=len(class_names))
        pad_dir = work / "longest"
        pad_dir.mkdir(exist_ok=True)
        with progress_bar("measuring unlock data", total=shards.expected(config.splits)) as advance:
            for name, index, start, part in shards.mine(config.splits):
                path = pad_dir / f"{name}-{index:05d}.json"
                fingerprint = _rows_sha256(part)
                if not (path.is_file() and json.loads(path.read_text())["source_sha256"] == fingerprint):
                    tensors = to_tensors(part, image_column, label_column, image_size, class_names)
                    value = max((finder.longest(tensors.images[i:i + chunk], tensors.labels[i:i + chunk], start + i)
                                 for i in range(0, part.num_rows, chunk)), default=0)
                    atomic_write(path, lambda partial, value=value: partial.write_text(
                        json.dumps({"longest": value, "rows": part.num_rows, "source_sha256": fingerprint})))
                advance()
        found = {job: json.loads(path.read_text()) for job, path in _wait_for(
            {(name, index): pad_dir / f"{name}-{index:05d}.json" for name in config.splits
             for index in range(shards.count[name])}, work)}
        longest = max(s["longest"] for s in found.values())
        first_rows = sum(s["rows"] for (name, _), s in found.items() if name == config.splits[0])
    elif not streaming:
        first_rows = splits[config.splits[0]].num_rows
    method = rows_method(config, key, image_size, num_classes=len(class_names), first_split_rows=first_rows,
                         longest=longest)

    with progress_bar("protecting shards", total=shards.expected(written)) as advance:
        for name, index, start, part in shards.mine(written):
            stats_path = stats_dir / f"{name}-{index:05d}.json"
            fingerprint = _rows_sha256(part)
            done = stats_path.is_file() and json.loads(stats_path.read_text()).get("source") == [fingerprint, longest]
            if not (done and _shard_path(staging, name, index) is not None):
                with quiet_libraries():  # one bar per shard, the one above, not datasets' per map and file
                    stats = _write_shard(part, name, index, start, name in config.splits, features, staging, method,
                                         config.pixel_bound, image_column, label_column, class_names, image_size, chunk)
                stats["source"] = [fingerprint, longest]  # a shard is redone when its rows or the padding changed
                atomic_write(stats_path, lambda partial, stats=stats: partial.write_text(json.dumps(stats)))
            advance()
    if rank != 0:
        return None

    jobs = [(name, index) for name in written for index in range(shards.count[name])]
    stats = {job: json.loads(path.read_text()) for job, path in _wait_for(
        {(name, index): stats_dir / f"{name}-{index:05d}.json" for name, index in jobs}, work)}
    kept = {_shard_path(staging, name, index) for name, index in jobs}
    for path in (staging / "data").glob("*.parquet"):  # a resumed streaming run whose source now has fewer rows
        if path not in kept:
            path.unlink()
    for name, index in jobs:  # the final names, now that every split's shard count is known
        path = _shard_path(staging, name, index)
        final = path.with_name(f"{name}-{index:05d}-of-{shards.count[name]:05d}.parquet")
        if path != final:
            os.replace(path, final)
    info = DatasetInfo(features=features, splits=SplitDict(), download_size=0)
    for name in written:
        mine = [stats[(n, index)] for n, index in jobs if n == name]
        info.splits.add(SplitInfo(name, num_bytes=sum(s["nbytes"] for s in mine), num_examples=sum(s["rows"] for s in mine)))
    info.download_size = sum(path.stat().st_size for path in (staging / "data").glob("*.parquet"))
    info.dataset_size = sum(split.num_bytes for split in info.splits.values())

    first = config.splits[0]
    fitted = [stats[(name, index)] for name, index in jobs if name == first]
    values, squares = sum(s["values"] for s in fitted), sum(s["sum_squares"] for s in fitted)
    mse = squares / values
    merged = method.merge([stats[(name, index)]["method"] for name, index in jobs if name in config.splits])
    method_fields, method_results, authorized, private_files = method.finish(merged)
    test_split = None
    if config.keep_other_splits:  # as data.held_out_split: the first held-out split with every label
        test_split = next((name for name in TEST_SPLITS if name in written and name not in config.splits
                           and shards.count[name] and all(stats[(name, i)]["every_label"] for i in range(shards.count[name]))), None)
    card = UgeBlock(
        uge_hf_version=__version__, method=config.method,
        authorized=[net if isinstance(net, AuthorizedEntry) else AuthorizedEntry.from_dict(net, i)
                    for i, net in enumerate(authorized)],
        recipe=config.recipe, input=InputTransform(tuple(image_size), INPUT_MEAN, INPUT_STD), rho=config.rho,
        pixel_bound=config.pixel_bound, method_fields=method_fields, seed=config.seed,
        protected_splits=list(config.splits), columns={"image": image_column, "label": label_column},
        class_names=list(class_names),
        results=Results(
            perturbation={first: PerturbationStats(
                max(s["linf_levels"] for s in fitted), round(sum(s["sum_abs"] for s in fitted) / values, 4),
                round(10 * math.log10(255**2 / mse), 2) if mse > 0 else float("inf"))},
            test_split=test_split, method_results=method_results),
        config=config.public_dict(),
    )
    card = UgeBlock.from_dict(portable(card.to_dict()))  # as the release's README.md holds it
    atomic_write(staging / "uge_config.json", lambda partial: partial.write_bytes(json_bytes(portable(config.public_dict()))))
    _preview(shards.head, staging, first, image_column, label_column, class_names, image_size).save(
        staging / "preview.png", format="PNG")
    render_card(card.to_dict(), info, portable(source.name), license=source.license, hub_id=source.hub_id).save(
        str(staging / "README.md"))
    with write_private(private, private_files):
        replace_folder(staging, output)  # with --overwrite (checked by the caller) the old release goes last
    shutil.rmtree(work, ignore_errors=True)
    from .layout import release_data_files

    # memory-mapped (converted into the datasets cache batch by batch), not read into memory as layout.load_release
    # does: the result must not hold the whole release either. A streaming source gets a streaming result, read
    # straight from the release's shards (no second copy of the release in the cache)
    files = {name: [str(f) for f in paths] for name, paths in release_data_files(output).items() if name in written}
    if streaming:
        from datasets import load_dataset

        released = load_dataset("parquet", data_files=files, features=features, streaming=True)
    else:
        released = DatasetDict({name: Dataset.from_parquet(files[name], features=features, split=name)
                                for name in written})
    return released, card, output.resolve(), private.resolve()


class _Shards:
    """The shards of each split, in row order, and which are this rank's.

    `mine(names)` yields (split, index, first row, rows as a map-style `Dataset`) for this rank's shards of `names`
    (in the source's split order): shard i of them, numbered across the splits, is rank i % world's. A map-style
    split is sliced (`select`, memory-mapped: only the shard is read); a streaming one is read in order in
    `shard_rows` batches, images undecoded, and every rank reads every batch (others' are skipped unchecked and
    undecoded). `check(split, first row, rows)` runs on each of this rank's shards before it is yielded. `count`
    holds each split's shard count once it has been read through; `head`, rank 0's copy of the first rows of
    `head_split` (for the preview), once they have been read.
    """

    def __init__(self, splits, shard_rows: int, rank: int, world: int, head_split: str,
                 check: Callable[[str, int, Dataset], None] | None):
        self.splits, self.shard_rows, self.rank, self.world, self.check = splits, shard_rows, rank, world, check
        self.head_split, self.count, self.head = head_split, {}, None

    def mine(self, names: list[str]) -> Iterator[tuple[str, int, int, Dataset]]:
        number = 0
        for name in [name for name in self.splits if name in names]:
            index = -1
            for index, (start, load) in enumerate(self._parts(self.splits[name])):
                if self.rank == 0 and self.head is None and name == self.head_split and index == 0:
                    part = load()
                    self.head = part.select(range(min(PREVIEW_ROWS, part.num_rows)))
                if number % self.world == self.rank:
                    part = load()
                    if self.check is not None:
                        self.check(name, start, part)
                    yield name, index, start, part
                number += 1
            self.count[name] = index + 1

    def expected(self, names: list[str]) -> int | None:
        """How many shards of `names` are this rank's; None for a streaming split (its rows are not known yet)."""
        if any(isinstance(self.splits[name], IterableDataset) for name in names):
            return None
        total = sum(max(1, -(-self.splits[name].num_rows // self.shard_rows)) for name in self.splits if name in names)
        return len(range(self.rank, total, self.world))

    def _parts(self, split) -> Iterator[tuple[int, Callable[[], Dataset]]]:
        if isinstance(split, IterableDataset):
            yield from _stream_parts(split, self.shard_rows)
            return
        rows = split.num_rows
        for start in range(0, max(rows, 1), self.shard_rows):  # an empty split is one empty shard
            yield start, lambda start=start: split.select(range(start, min(rows, start + self.shard_rows)))


def _stream_parts(split: IterableDataset, shard_rows: int) -> Iterator[tuple[int, Callable[[], Dataset]]]:
    """(first row, rows as an in-memory `Dataset`) per `shard_rows` rows of a streaming split, images undecoded.

    Batches come from `IterableDataset.iter` (the ecosystem's own batching, any streaming source); a batch is one
    Python dict of columns, turned into a table with the split's features (images stay their stored bytes).
    """
    features = split.features.copy()
    undecoded = {name: ImageFeature(decode=False) for name, f in features.items() if isinstance(f, ImageFeature)}
    features.update(undecoded)
    raw = split.cast_column(next(iter(undecoded)), undecoded[next(iter(undecoded))]) if undecoded else split
    for column, feature in list(undecoded.items())[1:]:
        raw = raw.cast_column(column, feature)
    start = 0
    for batch in raw.iter(batch_size=shard_rows):
        rows = len(next(iter(batch.values())))
        yield start, lambda batch=batch: Dataset.from_dict(batch, features=features)
        start += rows
    if start == 0:  # an empty split is one empty shard, as map-style
        yield 0, lambda: Dataset.from_dict({name: [] for name in features}, features=features)


def _shard_path(staging: Path, name: str, index: int) -> Path | None:
    """The written parquet file of shard `index` of `name` (before or after its final rename), or None."""
    found = sorted((staging / "data").glob(f"{name}-{index:05d}*.parquet"))
    return found[0] if found else None


def _run_key(work: Path, run: dict, rank: int, draw: Callable[[], bytes], load: Callable[[Path], object]):
    """The run's key, shared by the ranks and kept for a resume in `work/private/key.json` (owner-only).

    Rank 0 starts the work folder afresh when it belongs to another run (another config, source size or version),
    then writes `run.json` and the key file (`draw()`'s bytes); the other ranks wait until both are there and
    `run.json` is this run's. Returns `load(key file)`.
    """
    described, key_path = work / "run.json", work / "private" / "key.json"
    if rank == 0:
        for failed in work.glob("failed-rank*.txt"):  # a rerun starts with no rank failed
            failed.unlink()
        if not (described.is_file() and json.loads(described.read_text()) == run and key_path.is_file()):
            shutil.rmtree(work, ignore_errors=True)
            key_bytes = draw()
            old_mask = os.umask(0o077)  # the work folder holds the key until the private folder is written
            try:
                key_path.parent.mkdir(parents=True, mode=0o700)
                atomic_write(key_path, lambda partial: partial.write_bytes(key_bytes))
            finally:
                os.umask(old_mask)
            atomic_write(described, lambda partial: partial.write_text(json.dumps(run)))
    else:
        _wait_for({"run": described, "key": key_path}, work, ready=lambda: json.loads(described.read_text()) == run)
    return load(key_path)


def _wait_for(paths: dict, work: Path, ready=lambda: True) -> list:
    """Wait until every path exists (and `ready()`), polling the shared filesystem; [(name, path)].

    Raises UgeError with another rank's message as soon as it left one in `work` (`failed-rankN.txt`: it stopped on
    a UgeError), and when none of the missing files appeared for `STALL_SECONDS` (another rank died or was never
    started): the finished shards stay in the work folder, and running the same command again resumes.
    """
    seen, since = -1, time.monotonic()
    while True:
        for failed in sorted(work.glob("failed-rank*.txt")):
            raise UgeError(f"{failed.stem.split('-')[1]} stopped: {failed.read_text()}")
        present = sum(path.is_file() for path in paths.values())
        if present == len(paths) and ready():
            return list(paths.items())
        if present != seen:
            seen, since = present, time.monotonic()
        elif time.monotonic() - since > STALL_SECONDS:
            missing = [path.name for path in paths.values() if not path.is_file()]
            raise UgeError(f"waited {STALL_SECONDS} s for {len(missing)} file(s) another process should write"
                           f" ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}): is every rank running?"
                           " Run the same command again: finished shards are kept")
        time.sleep(WAIT_SECONDS)


def _rows_sha256(part: Dataset) -> str:
    """sha256 of a shard's source rows as stored (Arrow IPC of its table, without the schema's metadata): a resumed
    run redoes a shard whose source changed."""
    import pyarrow as pa

    table = part.with_format("arrow")[:]
    table = table.replace_schema_metadata(None)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()


def _write_shard(part: Dataset, name: str, index: int, start: int, protect: bool, features: Features, staging: Path,
                 method, bound: int, image_column: str, label_column: str, class_names: list[str],
                 image_size: tuple[int, int], rows_per_chunk: int) -> dict:
    """Protect (or copy) one shard's rows with `method` (a `*Rows`) and write its parquet file; its statistics.

    The written file is read back and checked against the source rows (every pixel within the bound, every label
    unchanged) before it counts: a UgeError otherwise, and the shard is not kept.
    """
    stats = {"rows": part.num_rows}
    if protect:
        source = to_tensors(part, image_column, label_column, image_size, class_names)
        chunks, columns, method_stats = [], {column: [] for column in method.columns}, []
        sum_abs = sum_squares = linf = 0
        for first in range(0, part.num_rows, rows_per_chunk):
            images = source.images[first:first + rows_per_chunk]
            out, added, chunk_stats = method.protect(images, source.labels[first:first + rows_per_chunk], start + first,
                                                     name)
            chunks.append(out)
            method_stats.append(chunk_stats)
            for column, values in added.items():
                columns[column] += values
            diff = out.int() - images.int()  # per chunk, in integers: exact sums, a chunk's memory
            sum_abs += int(diff.abs().sum())
            sum_squares += int(diff.pow(2).sum())
            linf = max(linf, int(diff.abs().max()))
        protected = torch.cat(chunks)
        stats.update(values=protected.numel(), sum_abs=sum_abs, sum_squares=sum_squares, linf_levels=float(linf),
                     method=method.merge(method_stats))

        def replace(batch: dict, indices: list[int]) -> dict:
            batch[image_column] = to_pil_images(protected[indices])
            for column, values in columns.items():
                batch[column] = [values[i] for i in indices]
            return batch

        part = part.cast_column(image_column, ImageFeature(decode=False)).map(
            replace, batched=True, with_indices=True, features=features, keep_in_memory=True,
            new_fingerprint=hashlib.sha256(protected.numpy().tobytes()).hexdigest()[:32])
    else:
        stats["every_label"] = part.num_rows > 0 and None not in part[label_column] and not (
            isinstance(part.features[label_column], ClassLabel) and -1 in part[label_column])
        for column, feature in method.columns.items():  # every split shares one schema: null where nothing was protected
            part = part.add_column(column, [None] * part.num_rows, new_fingerprint=f"{part._fingerprint}-{column}-null")
            part = part.cast_column(column, feature)
    table = standalone(part, features)
    stats["nbytes"] = table.data.nbytes
    path = staging / "data" / f"{name}-{index:05d}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda partial: table.to_parquet(str(partial)))
    if protect:
        _recheck(path, source, image_column, label_column, part, bound, name, start)
    return stats


def _recheck(path: Path, source, image_column: str, label_column: str, part: Dataset, bound: int, name: str,
             start: int) -> None:
    """Every image of the written shard decodes to within `bound` levels of its source; every label is unchanged."""
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=[image_column, label_column])
    if table[label_column].to_pylist() != list(part[label_column]):
        path.unlink()
        raise UgeError(f"split {name}, rows {start}-{start + part.num_rows - 1}: the written labels differ from the source")
    for row, value in enumerate(table[image_column].to_pylist()):
        pixels = torch.from_numpy(decode_image(value)).permute(2, 0, 1).int()
        if int((pixels - source.images[row].int()).abs().max()) > bound:
            path.unlink()
            raise UgeError(f"split {name}, row {start + row}: the written image differs from its source by more than"
                           f" {bound} levels (the release was not written)")


def _preview(head: Dataset, staging: Path, name: str, image_column: str, label_column: str, class_names: list[str],
             image_size: tuple[int, int]):
    """The preview grid from the first rows of the first protected split (source) and of its first shard (release)."""
    import pyarrow.parquet as pq

    from .apply import preview_grid

    first = sorted((staging / "data").glob(f"{name}-00000-of-*.parquet"))[0]
    table = pq.read_table(first, columns=[image_column]).slice(0, PREVIEW_ROWS)
    protected = torch.stack([torch.from_numpy(decode_image(v)).permute(2, 0, 1) for v in table[image_column].to_pylist()])
    source = to_tensors(head.select(range(len(protected))), image_column, label_column, image_size, class_names).images
    return preview_grid(source, protected)
