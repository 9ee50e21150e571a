"""The keyed method written shard by shard (`shard_rows`): bounded memory, resume per shard, ranks share the shards,
and the bytes depend on none of it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import DatasetDict

import uge_hf
from uge_hf import sharded
from uge_hf.card import read_card
from uge_hf.errors import UgeError

from .conftest import KEYED_OPTIONS, make_image_dataset

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


@pytest.mark.slow
def test_two_ranks_write_the_same_bytes_as_one_process(reference, tmp_path):
    """RANK / WORLD_SIZE as torchrun and accelerate launch export them: the ranks split the shards, rank 0 waits for
    them and writes the card; the release is byte for byte the one-process one."""
    key = reference.parent / "one.private" / "key.json"
    script = (f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
              "import uge_hf\nfrom tests.test_sharded import source\nfrom tests.conftest import KEYED_OPTIONS\n"
              f"out = uge_hf.protect(source(), output_dir={str(tmp_path / 'two')!r}, shard_rows=16,"
              f" key_file={str(key)!r}, **KEYED_OPTIONS)\nprint(type(out).__name__)\n")
    env = {**os.environ, "WORLD_SIZE": "2", "OMP_NUM_THREADS": "1", "UGE_HF_NO_PROGRESS": "1", "PYTHONPATH": str(ROOT)}
    ranks = [subprocess.Popen([sys.executable, "-c", script], env={**env, "RANK": str(rank)}, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    outputs = [rank.communicate(timeout=300) for rank in ranks]
    assert [rank.returncode for rank in ranks] == [0, 0], [err[-2000:] for _, err in outputs]
    assert [out.strip().splitlines()[-1] for out, _ in outputs] == ["ProtectResult", "NoneType"]
    assert release_bytes(tmp_path / "two") == release_bytes(reference)


def test_shard_rows_mistakes_are_one_line_errors(tmp_path):
    with pytest.raises(UgeError, match="applies to the keyed method, not lock"):
        uge_hf.ProtectConfig(method="lock", shard_rows=10)
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
