"""The per-row methods (keyed, lock) written shard by shard (`shard_rows`): bounded memory, resume per shard, ranks
share the shards, streaming sources, and the bytes depend on none of it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from datasets import DatasetDict, IterableDataset, IterableDatasetDict

import uge_hf
from uge_hf import sharded
from uge_hf.card import read_card
from uge_hf.errors import UgeError

from .conftest import KEYED_OPTIONS, LOCK_OPTIONS, make_image_dataset

ROOT = Path(__file__).resolve().parents[1]


def source() -> DatasetDict:
    return DatasetDict(train=make_image_dataset(50, seed=0), test=make_image_dataset(12, seed=1))


def release_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """A sharded release of 50 + 12 rows at 16 rows per shard; its key (in .private) drives the comparisons."""
    out = tmp_path_factory.mktemp("sharded") / "one"
    uge_hf.protect(source(), output_dir=out, shard_rows=16, **KEYED_OPTIONS)
    return out


def test_a_sharded_release_is_a_whole_keyed_release(reference):
    files = sorted(p.name for p in (reference / "data").glob("*.parquet"))
    assert files == ["test-00000-of-00001.parquet"] + [f"train-0000{i}-of-00004.parquet" for i in range(4)]
    assert not [str(c) for c in uge_hf.verify_release(reference, original=source()) if not c.ok]
    card = read_card(reference)
    assert card.method == "keyed" and card.config["shard_rows"] == 16 and card.results.test_split == "test"
    assert card.results.method_results["invariance"]["images_checked"] == 50
    assert card.results.perturbation["train"].linf_levels <= card.pixel_bound
    assert (reference.parent / "one.private" / "key.json").is_file() and not (reference.parent / "one.uge-work").exists()
    # the authorized network loads with the private folder's weights, as from an in-memory release
    assert type(uge_hf.load_authorized(reference, weights=reference.parent / "one.private")).__name__ == "KeyedNetwork"


def test_the_same_key_gives_the_same_bytes(reference, tmp_path):
    key = reference.parent / "one.private" / "key.json"
    result = uge_hf.protect(source(), output_dir=tmp_path / "again", shard_rows=16, key_file=str(key), **KEYED_OPTIONS)
    assert release_bytes(tmp_path / "again") == release_bytes(reference)
    assert list(result.dataset) == ["train", "test"] and result.dataset["train"].num_rows == 50
    assert result.dataset["train"].features == result.dataset["test"].features  # the released splits, as written


def test_a_killed_run_resumes_at_the_shard_it_stopped_and_matches(reference, tmp_path, monkeypatch):
    key = reference.parent / "one.private" / "key.json"
    written, real = [], sharded._write_shard

    def dies_after_two(*args, **kwargs):
        if len(written) == 2:
            raise KeyboardInterrupt  # the run is killed while protecting the third shard
        written.append(args[1:3])
        return real(*args, **kwargs)

    monkeypatch.setattr(sharded, "_write_shard", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        uge_hf.protect(source(), output_dir=tmp_path / "out", shard_rows=16, key_file=str(key), **KEYED_OPTIONS)
    assert not (tmp_path / "out").exists() and written == [("train", 0), ("train", 1)]
    monkeypatch.setattr(sharded, "_write_shard", lambda *a, **k: (written.append(a[1:3]), real(*a, **k))[1])
    uge_hf.protect(source(), output_dir=tmp_path / "out", shard_rows=16, key_file=str(key), **KEYED_OPTIONS)
    assert written[2:] == [("train", 2), ("train", 3), ("test", 0)]  # the two done shards were not redone
    assert release_bytes(tmp_path / "out") == release_bytes(reference)


def two_ranks(tmp_path: Path, statements: str, timeout: int) -> tuple[list[int], list[tuple[str, str]]]:
    """`statements` (in a script that imported uge_hf and tests.test_sharded's names) in two processes with RANK /
    WORLD_SIZE as torchrun and accelerate launch export them: each rank's return code and (stdout, stderr)."""
    script = (f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
              f"import uge_hf\nfrom tests.test_sharded import *\n{statements}\n")
    env = {**os.environ, "WORLD_SIZE": "2", "OMP_NUM_THREADS": "1", "UGE_HF_NO_PROGRESS": "1", "PYTHONPATH": str(ROOT)}
    ranks = [subprocess.Popen([sys.executable, "-c", script], env={**env, "RANK": str(rank)}, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    outputs = [rank.communicate(timeout=timeout) for rank in ranks]
    return [rank.returncode for rank in ranks], outputs


def run_two_ranks(tmp_path: Path, call: str) -> None:
    """`call` (a protect() call) in two ranks; rank 0 returns the result, rank 1 None."""
    codes, outputs = two_ranks(tmp_path, f"out = {call}\nprint(type(out).__name__)", timeout=300)
    assert codes == [0, 0], [err[-2000:] for _, err in outputs]
    assert [out.strip().splitlines()[-1] for out, _ in outputs] == ["ProtectResult", "NoneType"]


@pytest.mark.slow
def test_two_ranks_write_the_same_bytes_as_one_process(reference, tmp_path):
    """The ranks split the shards, rank 0 waits for them and writes the card; the release is byte for byte the
    one-process one."""
    key = reference.parent / "one.private" / "key.json"
    run_two_ranks(tmp_path, f"uge_hf.protect(source(), output_dir={str(tmp_path / 'two')!r}, shard_rows=16,"
                            f" key_file={str(key)!r}, **KEYED_OPTIONS)")
    assert release_bytes(tmp_path / "two") == release_bytes(reference)


def test_shard_rows_mistakes_are_one_line_errors(tmp_path):
    with pytest.raises(UgeError, match="applies to the per-row methods keyed and lock, not gradient-matching"):
        uge_hf.ProtectConfig(method="gradient-matching", shard_rows=10)
    with pytest.raises(UgeError, match="shard_rows or num_shards, not both"):
        uge_hf.ProtectConfig(method="keyed", shard_rows=10, num_shards=2)
    with pytest.raises(UgeError, match="shard_rows must be >= 1"):
        uge_hf.ProtectConfig(method="keyed", shard_rows=0)
    with pytest.raises(UgeError, match="give an output folder"):
        uge_hf.protect(source(), shard_rows=16, key_file="k.json", **KEYED_OPTIONS)


def test_rank_0_gives_up_when_another_rank_never_comes_and_a_rerun_resumes(reference, tmp_path, monkeypatch):
    key = reference.parent / "one.private" / "key.json"
    monkeypatch.setattr(sharded, "STALL_SECONDS", 1)
    monkeypatch.setattr(sharded, "WAIT_SECONDS", 0.05)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")  # rank 1 is never started
    with pytest.raises(UgeError, match=r"waited 1 s for 2 file\(s\) .*train-00001.json.*Run the same command again"):
        uge_hf.protect(source(), output_dir=tmp_path / "out", shard_rows=16, key_file=str(key), **KEYED_OPTIONS)
    assert not (tmp_path / "out").exists()
    monkeypatch.setenv("WORLD_SIZE", "1")
    uge_hf.protect(source(), output_dir=tmp_path / "out", shard_rows=16, key_file=str(key), **KEYED_OPTIONS)
    assert release_bytes(tmp_path / "out") == release_bytes(reference)


# --- the lock method: blobs padded to the release's longest residual, found by a first pass ---------------------------

def lock_source() -> DatasetDict:
    """48 + 48 rows: at 16 rows per shard the layout is the in-memory writer's at num_shards=3."""
    return DatasetDict(train=make_image_dataset(48, seed=0), test=make_image_dataset(48, seed=1))


def without_layout_knob(files: dict[str, bytes]) -> dict[str, bytes]:
    """The release's files with the one config value that differs between the two writers (`num_shards: 3` /
    `shard_rows: 16`, both in the card's config and uge_config.json) set to null."""
    out = dict(files)
    for name in ("README.md", "uge_config.json"):
        text = out[name].decode()
        for knob in ("num_shards", "shard_rows"):
            text = text.replace(f'"{knob}": 3', f'"{knob}": null').replace(f'"{knob}": 16', f'"{knob}": null')
            text = text.replace(f"{knob}: 3\n", f"{knob}: null\n").replace(f"{knob}: 16\n", f"{knob}: null\n")
        out[name] = text.encode()
    return out


@pytest.fixture(scope="module")
def lock_pair(tmp_path_factory) -> tuple[Path, Path]:
    """The in-memory lock writer (num_shards=3) and the shard writer (16 rows per shard), same key."""
    folder = tmp_path_factory.mktemp("lock")
    uge_hf.protect(lock_source(), output_dir=folder / "whole", num_shards=3, **LOCK_OPTIONS)
    uge_hf.protect(lock_source(), output_dir=folder / "sharded", shard_rows=16,
                   key_file=str(folder / "whole.private"), **LOCK_OPTIONS)
    return folder / "whole", folder / "sharded"


def test_a_sharded_lock_release_is_the_in_memory_one_byte_for_byte_and_unlocks(lock_pair):
    whole, sharded_out = lock_pair
    files = release_bytes(sharded_out)
    assert sorted(f for f in files if f.startswith("data/")) == [
        f"data/{split}-0000{i}-of-00003.parquet" for split in ("test", "train") for i in range(3)]
    assert files["README.md"] != release_bytes(whole)["README.md"]  # the layout knob, and only it:
    assert without_layout_knob(files) == without_layout_knob(release_bytes(whole))
    card = read_card(sharded_out)
    assert card.config["shard_rows"] == 16 and card.results.method_results["unlock"]["rows_checked"] == 48
    assert (sharded_out.parent / "sharded.private" / "key.json").read_bytes() == \
        (whole.parent / "whole.private" / "key.json").read_bytes()
    unlocked = uge_hf.unlock(sharded_out, key=sharded_out.parent / "sharded.private")
    source = lock_source()
    for split in ("train", "test"):
        assert np.array_equal(np.stack([np.asarray(image) for image in unlocked[split]["picture"]]),
                              np.stack([np.asarray(image.convert("RGB")) for image in source[split]["picture"]]))


def test_a_killed_lock_run_skips_the_first_pass_and_the_done_shards(lock_pair, tmp_path, monkeypatch):
    from uge_hf.methods.lock import LockRows

    whole, _ = lock_pair
    key = str(whole.parent / "whole.private")
    calls, real_longest, real_write = [], LockRows.longest, sharded._write_shard

    def longest(self, *args):
        calls.append("longest")
        return real_longest(self, *args)

    def dies_after_one(*args, **kwargs):
        if calls.count("write") == 1:
            raise KeyboardInterrupt
        calls.append("write")
        return real_write(*args, **kwargs)

    monkeypatch.setattr(LockRows, "longest", longest)
    monkeypatch.setattr(sharded, "_write_shard", dies_after_one)
    with pytest.raises(KeyboardInterrupt):
        uge_hf.protect(lock_source(), output_dir=tmp_path / "out", shard_rows=16, key_file=key, **LOCK_OPTIONS)
    assert calls == ["longest"] * 3 + ["write"] and not (tmp_path / "out").exists()  # the train split's 3 shards
    calls.clear()
    monkeypatch.setattr(sharded, "_write_shard", lambda *a, **k: (calls.append("write"), real_write(*a, **k))[1])
    uge_hf.protect(lock_source(), output_dir=tmp_path / "out", shard_rows=16, key_file=key, **LOCK_OPTIONS)
    assert calls == ["write"] * 5  # no first pass again, and the finished shard kept
    assert without_layout_knob(release_bytes(tmp_path / "out")) == without_layout_knob(release_bytes(whole))


# --- streaming sources: read in shard_rows batches, in order; the same bytes as the map-style source ----------------

def streaming(source: DatasetDict) -> IterableDatasetDict:
    return IterableDatasetDict({name: split.to_iterable_dataset(num_shards=2) for name, split in source.items()})


@pytest.mark.parametrize("method", ["keyed", "lock"])
def test_a_streaming_source_gives_the_map_style_release(method, reference, lock_pair, tmp_path):
    """Rows counted as shards are written: the card's dataset_info (in README.md) is the map-style one, byte for byte."""
    options, source_, expected = ((KEYED_OPTIONS, source(), reference) if method == "keyed"
                                  else (LOCK_OPTIONS, lock_source(), lock_pair[1]))
    key = expected.parent / f"{expected.name}.private"
    result = uge_hf.protect(streaming(source_), output_dir=tmp_path / "out", shard_rows=16, key_file=str(key), **options)
    assert release_bytes(tmp_path / "out") == release_bytes(expected)
    assert isinstance(result.dataset, IterableDatasetDict)  # a streaming result, read from the release's shards
    assert sum(1 for _ in result.dataset["train"]) == source_["train"].num_rows


def broken_stream():
    """40 rows whose row 21 (in the second shard of 16 rows) is not an image."""
    import datasets

    rows = make_image_dataset(40, seed=0).cast_column("picture", datasets.Image(decode=False))
    broken = rows.map(lambda row, i: {"picture": {"bytes": b"not an image", "path": None} if i == 21 else row["picture"]},
                      with_indices=True, features=rows.features)
    return broken.to_iterable_dataset()


def no_rows():
    yield from ()


def test_a_bad_row_of_a_streaming_source_is_named_and_nothing_is_written(tmp_path):
    with pytest.raises(UgeError, match=r"split 'train', row 21, column 'picture': could not decode the image"):
        uge_hf.protect(broken_stream(), output_dir=tmp_path / "out", shard_rows=16, **KEYED_OPTIONS)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.private").exists()
    with pytest.raises(UgeError, match="split 'train' is empty: there is nothing to protect"):
        uge_hf.protect(IterableDataset.from_generator(no_rows, features=make_image_dataset(4).features),
                       output_dir=tmp_path / "empty", shard_rows=16, image_size=16, **KEYED_OPTIONS)


@pytest.mark.slow
def test_a_rank_that_stops_on_a_bad_row_stops_rank_0_at_once_with_its_message(tmp_path):
    """Row 21 is in the second shard, rank 1's: rank 0 does not wait STALL_SECONDS for it but reports rank 1's error."""
    codes, outputs = two_ranks(tmp_path, f"uge_hf.protect(broken_stream(), output_dir={str(tmp_path / 'out')!r},"
                                         " shard_rows=16, **KEYED_OPTIONS)", timeout=120)
    errors = [err for _, err in outputs]
    assert codes == [1, 1]
    assert "rank1 stopped: split 'train', row 21, column 'picture': could not decode the image" in errors[0]
    assert not (tmp_path / "out").exists()


def test_streaming_mistakes_are_one_line_errors_before_any_work(tmp_path):
    stream = make_image_dataset(8, seed=0).to_iterable_dataset()
    with pytest.raises(UgeError, match=r"gradient-matching method trains on the whole split.*pass a map-style Dataset"):
        uge_hf.protect(stream, output_dir=tmp_path / "a", method="gradient-matching", encoder="surrogate")
    with pytest.raises(UgeError, match="a streaming source is protected shard by shard: pass shard_rows"):
        uge_hf.protect(stream, output_dir=tmp_path / "b", **KEYED_OPTIONS)
    import datasets

    plain = stream.cast_column("category", datasets.Value("int64"))
    with pytest.raises(UgeError, match="not a ClassLabel: its class names must be known before the first shard"):
        uge_hf.protect(plain, output_dir=tmp_path / "c", shard_rows=4, label_column="category", **KEYED_OPTIONS)
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("source_kind", ["lock_source()", "streaming(lock_source())"])
def test_two_lock_ranks_write_the_one_process_bytes(source_kind, lock_pair, tmp_path):
    """Two ranks, lock method: the first pass's longest residual is shared through the work folder; map-style or
    streaming (every rank reads the stream, each decodes its own shards), the one-process release byte for byte."""
    key = lock_pair[0].parent / "whole.private"
    run_two_ranks(tmp_path, f"uge_hf.protect({source_kind}, output_dir={str(tmp_path / 'two')!r}, shard_rows=16,"
                            f" key_file={str(key)!r}, **LOCK_OPTIONS)")
    assert release_bytes(tmp_path / "two") == release_bytes(lock_pair[1])
