"""The keyed method, written shard by shard (`ProtectConfig.shard_rows`): memory bounded by one shard, a killed run
resumes at shard granularity, and the ranks of `torchrun` / `accelerate launch` share the shards.

    split rows [i * shard_rows, (i + 1) * shard_rows) --decode, protect_keyed(first_row=), PNG, embed-->
        data/{split}-{i:05d}-of-{n:05d}.parquet (+ its statistics, re-checked against its source rows)
    rank 0, once every shard exists: card (dataset_info from the shards), preview, uge_config.json, private folder,
    then the staging folder moved into place in one rename

The shard layout depends only on `shard_rows` and the row counts, and every row's protection only on the key and its
row index, so any number of processes (and any resume) gives the same bytes as one process. Ranks are read from
`RANK` / `WORLD_SIZE` (what both launchers export); shard i goes to rank i % WORLD_SIZE and rank 0 waits for the
others' shards on the shared filesystem (no process group needed). The run's key, drawn by rank 0 (or
`key_file`), waits in the work folder (owner-only) until the private folder is written: a resumed run reuses it.
What is not here yet (the lock method, streaming sources, a size-based layout): docs/streaming-plan.md.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from pathlib import Path

import torch
from datasets import Dataset, DatasetDict, DatasetInfo, Features, SplitDict, SplitInfo
from datasets import Image as ImageFeature

from .card import InputTransform, PerturbationStats, Results, UgeBlock, render_card
from .config import ProtectConfig
from .data import SourceMetadata, decode_image, held_out_split, to_pil_images, to_tensors
from .errors import UgeError
from .files import atomic_write, json_bytes, portable, replace_folder
from .inputs import INPUT_MEAN, INPUT_STD
from .key import SecretKey, key_json, load_secret_key, protect_keyed
from .private import write_private
from .progress import progress_bar, quiet_libraries
from .release import standalone
from .version import __version__

WAIT_SECONDS = 0.5  # how often rank 0 looks for the other ranks' shards (and the others for the run's key)
# rank 0 gives up when no awaited file appeared for this long (a rank died): a UgeError, the finished shards kept
STALL_SECONDS = 1800


def protect_sharded(splits: DatasetDict, config: ProtectConfig, image_column: str, label_column: str,
                    class_names: list[str], image_size: tuple[int, int], output: Path, private: Path,
                    source: SourceMetadata) -> tuple[DatasetDict, UgeBlock, Path, Path] | None:
    """Write the keyed release of `splits` (validated) into `output`, its key material into `private`.

    Returns (released splits read back from the shards, the card's block, output, private) on rank 0, None on the
    other ranks. Raises UgeError when a written shard fails its re-check against its source rows (nothing is moved
    into place).
    """
    from .methods.base import chunk_rows
    from .methods.keyed import INVARIANCE_TOLERANCE_LEVELS, key_block, key_outputs, run_key

    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    work = output.parent / f"{output.name}.uge-work"
    staging, stats_dir = work / "release", work / "shards"
    written = [name for name in splits if name in config.splits or config.keep_other_splits]
    run = {"config": config.public_dict(), "key_file": config.key_file, "rows": {n: splits[n].num_rows for n in written},
           "image_size": list(image_size), "class_names": class_names, "uge_hf_version": __version__}
    key = _run_key(work, run, rank, lambda: run_key(config, len(class_names), image_size))
    stage = key.stage()
    stats_dir.mkdir(parents=True, exist_ok=True)
    features = Features({name: ImageFeature() if isinstance(feature, ImageFeature) else feature
                         for name, feature in splits[written[0]].features.items()})
    features[image_column] = ImageFeature()

    jobs = [(name, index, _count(splits[name].num_rows, config.shard_rows)) for name in written
            for index in range(_count(splits[name].num_rows, config.shard_rows))]
    mine = [job for number, job in enumerate(jobs) if number % world == rank]
    with progress_bar("protecting shards", total=len(mine)) as advance:
        for name, index, count in mine:
            start = index * config.shard_rows
            part = splits[name].select(range(start, min(splits[name].num_rows, start + config.shard_rows)))
            stats_path = stats_dir / f"{name}-{index:05d}.json"
            fingerprint = _rows_sha256(part)
            if not (stats_path.is_file() and json.loads(stats_path.read_text()).get("source_sha256") == fingerprint):
                with quiet_libraries():  # one bar per shard, the one above, not datasets' per map and file
                    stats = _write_shard(part, name, index, count, start, name in config.splits, features, staging,
                                         config, key, stage, image_column, label_column, class_names, image_size,
                                         chunk_rows(image_size))
                stats["source_sha256"] = fingerprint
                atomic_write(stats_path, lambda partial, stats=stats: partial.write_text(json.dumps(stats)))
            advance()
    if rank != 0:
        return None

    stats = {job: json.loads(path.read_text()) for job, path in _wait_for(
        {(name, index): stats_dir / f"{name}-{index:05d}.json" for name, index, _ in jobs})}
    info = DatasetInfo(features=features, splits=SplitDict(), download_size=0)
    for name in written:
        mine = [stats[(name, index)] for n, index, _ in jobs if n == name]
        info.splits.add(SplitInfo(name, num_bytes=sum(s["nbytes"] for s in mine), num_examples=sum(s["rows"] for s in mine)))
    info.download_size = sum(path.stat().st_size for path in (staging / "data").glob("*.parquet"))
    info.dataset_size = sum(split.num_bytes for split in info.splits.values())

    first = config.splits[0]
    fitted = [stats[(name, index)] for name, index, _ in jobs if name == first]
    values, squares = sum(s["values"] for s in fitted), sum(s["sum_squares"] for s in fitted)
    protected_stats = [stats[(name, index)] for name, index, _ in jobs if name in config.splits]
    over = sum(s["images_over_tolerance"] for s in protected_stats)
    if over:
        raise UgeError(f"{over} protected images fail the invariance check K(x_u) = K(T(x)) (a bug: please report it)")
    mse = squares / values
    authorized, private_files = key_outputs(config, key, stage, image_size)
    card = UgeBlock(
        uge_hf_version=__version__, method=config.method, authorized=authorized, recipe=config.recipe,
        input=InputTransform(tuple(image_size), INPUT_MEAN, INPUT_STD), rho=config.rho, pixel_bound=config.pixel_bound,
        method_fields=key_block(config, key, image_size), seed=config.seed, protected_splits=list(config.splits),
        columns={"image": image_column, "label": label_column}, class_names=list(class_names),
        results=Results(
            perturbation={first: PerturbationStats(
                max(s["linf_levels"] for s in fitted), round(sum(s["sum_abs"] for s in fitted) / values, 4),
                round(10 * math.log10(255**2 / mse), 2) if mse > 0 else float("inf"))},
            test_split=held_out_split(splits, config.splits, label_column) if config.keep_other_splits else None,
            method_results={
                "invariance": {"max_levels": max(s["invariance_max_levels"] for s in protected_stats),
                               "tolerance_levels": INVARIANCE_TOLERANCE_LEVELS,
                               "images_checked": sum(s["rows"] for s in protected_stats), "images_over_tolerance": 0},
                "mean_signal_levels": round(sum(s["amplitude_sum"] for s in protected_stats)
                                            / sum(s["rows"] for s in protected_stats), 3),
            }),
        config=config.public_dict(),
    )
    card = UgeBlock.from_dict(portable(card.to_dict()))  # as the release's README.md holds it
    atomic_write(staging / "uge_config.json", lambda partial: partial.write_bytes(json_bytes(portable(config.public_dict()))))
    _preview(splits[first], staging, first, image_column, label_column, class_names, image_size).save(
        staging / "preview.png", format="PNG")
    render_card(card.to_dict(), info, portable(source.name), license=source.license, hub_id=source.hub_id).save(
        str(staging / "README.md"))
    with write_private(private, private_files):
        replace_folder(staging, output)  # with --overwrite (checked by the caller) the old release goes last
    shutil.rmtree(work, ignore_errors=True)
    from .layout import release_data_files

    # memory-mapped (converted into the datasets cache batch by batch), not read into memory as layout.load_release
    # does: the result must not hold the whole release either
    files = release_data_files(output)
    released = DatasetDict({name: Dataset.from_parquet([str(f) for f in files[name]], features=features,
                                                       split=name) for name in written})
    return released, card, output.resolve(), private.resolve()


def _count(rows: int, shard_rows: int) -> int:
    return max(1, -(-rows // shard_rows))


def _run_key(work: Path, run: dict, rank: int, draw) -> SecretKey:
    """The run's key, shared by the ranks and kept for a resume in `work/key.json` (owner-only).

    Rank 0 starts the work folder afresh when it belongs to another run (another config, source size or version),
    then writes `run.json` and the key; the other ranks wait until both are there and `run.json` is this run's.
    """
    described, key_path = work / "run.json", work / "private" / "key.json"
    if rank == 0:
        if not (described.is_file() and json.loads(described.read_text()) == run and key_path.is_file()):
            shutil.rmtree(work, ignore_errors=True)
            key = draw()
            old_mask = os.umask(0o077)  # the work folder holds the key until the private folder is written
            try:
                key_path.parent.mkdir(parents=True, mode=0o700)
                atomic_write(key_path, lambda partial: partial.write_bytes(key_json(key)))
            finally:
                os.umask(old_mask)
            atomic_write(described, lambda partial: partial.write_text(json.dumps(run)))
    else:
        _wait_for({"run": described, "key": key_path}, ready=lambda: json.loads(described.read_text()) == run)
    return load_secret_key(key_path, len(run["class_names"]))


def _wait_for(paths: dict, ready=lambda: True) -> list:
    """Wait until every path exists (and `ready()`), polling the shared filesystem; [(name, path)].

    Raises UgeError when none of the missing files appeared for `STALL_SECONDS` (another rank died or was never
    started): the finished shards stay in the work folder, and running the same command again resumes.
    """
    seen, since = -1, time.monotonic()
    while True:
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
    """sha256 of a shard's source rows as stored (Arrow IPC of its table): a resumed run redoes a shard whose source
    changed."""
    import pyarrow as pa

    table = part.with_format("arrow")[:]
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()


def _write_shard(part: Dataset, name: str, index: int, count: int, start: int, protect: bool, features: Features,
                 staging: Path, config: ProtectConfig, key: SecretKey, stage, image_column: str, label_column: str,
                 class_names: list[str], image_size: tuple[int, int], rows_per_chunk: int) -> dict:
    """Protect (or copy) one shard's rows and write its parquet file; return its statistics.

    The written file is read back and checked against the source rows (every pixel within the bound, every label
    unchanged) before it counts: a UgeError otherwise, and the shard is not kept.
    """
    from .methods.keyed import INVARIANCE_TOLERANCE_LEVELS

    stats = {"rows": part.num_rows}
    if protect:
        source = to_tensors(part, image_column, label_column, image_size, class_names)
        chunks, invariance, amplitude, over = [], 0.0, 0.0, 0
        sum_abs = sum_squares = linf = 0
        for first in range(0, part.num_rows, rows_per_chunk):
            images = source.images[first:first + rows_per_chunk]
            out = protect_keyed(images, source.labels[first:first + rows_per_chunk], key, config.pixel_bound,
                                first_row=start + first, signs=config.keyed.signs, amplitude=config.keyed.amplitude,
                                pull=config.keyed.pull, stage=stage)
            chunks.append(out.images)
            invariance = max(invariance, float(out.invariance_levels.max()))
            over += int((out.invariance_levels > INVARIANCE_TOLERANCE_LEVELS).sum())
            amplitude += out.mean_amplitude * len(out.images)
            diff = out.images.int() - images.int()  # per chunk, in integers: exact sums, a chunk's memory
            sum_abs += int(diff.abs().sum())
            sum_squares += int(diff.pow(2).sum())
            linf = max(linf, int(diff.abs().max()))
        protected = torch.cat(chunks)
        stats.update(values=protected.numel(), sum_abs=sum_abs, sum_squares=sum_squares, linf_levels=float(linf),
                     invariance_max_levels=invariance, images_over_tolerance=over, amplitude_sum=amplitude)
        images = protected

        def replace(batch: dict, indices: list[int]) -> dict:
            batch[image_column] = to_pil_images(images[indices])
            return batch

        part = part.cast_column(image_column, ImageFeature(decode=False)).map(
            replace, batched=True, with_indices=True, features=features, keep_in_memory=True,
            new_fingerprint=hashlib.sha256(protected.numpy().tobytes()).hexdigest()[:32])
    table = standalone(part, features)
    stats["nbytes"] = table.data.nbytes
    path = staging / "data" / f"{name}-{index:05d}-of-{count:05d}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda partial: table.to_parquet(str(partial)))
    if protect:
        _recheck(path, source, image_column, label_column, part, config.pixel_bound, name, start)
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


def _preview(split: Dataset, staging: Path, name: str, image_column: str, label_column: str, class_names: list[str],
             image_size: tuple[int, int]):
    """The preview grid from the first rows of the first protected split (source) and of its first shard (release)."""
    import pyarrow.parquet as pq

    from .apply import preview_grid

    first = sorted((staging / "data").glob(f"{name}-00000-of-*.parquet"))[0]
    table = pq.read_table(first, columns=[image_column]).slice(0, 8)
    protected = torch.stack([torch.from_numpy(decode_image(v)).permute(2, 0, 1) for v in table[image_column].to_pylist()])
    source = to_tensors(split.select(range(len(protected))), image_column, label_column, image_size, class_names).images
    return preview_grid(source, protected)
