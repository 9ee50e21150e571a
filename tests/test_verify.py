"""verify_release / `uge-hf verify` on a tiny release: a good one passes, every kind of tampering fails by name."""

from __future__ import annotations

import hashlib
import io
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import DatasetDict, load_dataset
from PIL import Image
from typer.testing import CliRunner

import uge_hf
from uge_hf.card import read_card
from uge_hf.cli import app
from uge_hf.errors import UgeError
from uge_hf.specs import build_model, init_state_bytes

from .conftest import TINY_OPTIONS, make_image_dataset

runner = CliRunner()
SPEC = "resnet18-w4-seed0"
TRAIN = "data/train-00000-of-00001.parquet"


@pytest.fixture(scope="module")
def made(tiny_release) -> tuple[DatasetDict, Path]:
    """The shared tiny release and the source it was made from (conftest's standard tiny source)."""
    return DatasetDict(train=make_image_dataset(32, seed=0), test=make_image_dataset(12, seed=1)), tiny_release


@pytest.fixture
def source(made) -> DatasetDict:
    return made[0]


@pytest.fixture
def folder(made, tmp_path) -> Path:
    """A copy of the release to tamper with (same folder name as the original: the datasets cache pitfall)."""
    return Path(shutil.copytree(made[1], tmp_path / "cifar-uge"))


def failures(checks) -> dict[str, str]:
    return {check.name: check.detail for check in checks if not check.ok}


def edit_rows(path: Path, edit) -> None:
    """Rewrite a parquet shard with `edit(rows)` applied to its rows (a list of dicts), keeping its schema."""
    table = pq.read_table(path)
    rows = table.to_pylist()
    edit(rows)
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path)


def png(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(buffer, format="PNG")
    return buffer.getvalue()


def shift_pixel(rows: list[dict], row: int, levels: int) -> None:
    """Move pixel (y=3, x=5, green) of `row` by `levels` (towards the middle of the range), re-encoded as PNG."""
    pixels = np.array(Image.open(io.BytesIO(rows[row]["picture"]["bytes"])))
    value = int(pixels[3, 5, 1])
    pixels[3, 5, 1] = value + levels if value < 128 else value - levels
    rows[row]["picture"] = {"bytes": png(pixels), "path": None}


def test_a_good_release_passes_every_check(made):
    source, release = made
    checks = uge_hf.verify_release(release, original=source)
    assert failures(checks) == {}
    assert [c.name for c in checks] == ["card", f"weights {SPEC}", "no key material", "shards train", "shards test", "images train",
                                        "pixels train", "labels train", "labels test"]


def test_the_folder_is_a_plain_hf_dataset(made):
    source, release = made
    loaded = load_dataset(str(release))
    assert loaded["train"].features == source["train"].features
    assert loaded["test"]["category"] == source["test"]["category"]


def test_a_pixel_beyond_the_bound_fails_with_original(folder, source):
    bound = read_card(folder).pixel_bound
    assert not failures(uge_hf.verify_release(folder, original=source))  # passes first: then the same folder, tampered
    edit_rows(folder / TRAIN, lambda rows: shift_pixel(rows, 5, 3 * bound))
    failed = failures(uge_hf.verify_release(folder, original=source))
    assert list(failed) == ["pixels train"]  # nothing else can tell: only the source shows the bound is broken
    assert f"{TRAIN} row 5 (train row 5): pixel (y=3, x=5, channel 1)" in failed["pixels train"]
    assert f"> bound {bound}" in failed["pixels train"]


def test_a_reencoded_image_with_the_same_pixels_still_passes(folder, source):
    edit_rows(folder / TRAIN, lambda rows: shift_pixel(rows, 2, 0))
    assert not failures(uge_hf.verify_release(folder, original=source))


def test_swapped_weights_file_fails(folder):
    (folder / "authorized" / f"{SPEC}.safetensors").write_bytes(init_state_bytes(build_model("resnet18-w4-seed1", 4)))
    failed = failures(uge_hf.verify_release(folder))
    assert list(failed) == [f"weights {SPEC}"]
    assert f"authorized/{SPEC}.safetensors has sha256" in failed[f"weights {SPEC}"]
    assert "but the card declares" in failed[f"weights {SPEC}"]


def test_edited_hash_in_the_card_fails(folder):
    real = read_card(folder).authorized[0].init_sha256
    forged = ("0" if real[0] != "0" else "1") + real[1:]
    card = folder / "README.md"
    card.write_text(card.read_text().replace(real, forged))
    detail = failures(uge_hf.verify_release(folder))[f"weights {SPEC}"]
    assert f"the card declares {forged}" in detail and f"rebuilt here ({real})" in detail


def test_weights_and_card_swapped_together_still_fail(folder):
    """An attacker who swaps the file AND updates the card is caught by the spec rebuilt locally."""
    other = init_state_bytes(build_model("resnet18-w4-seed1", 4))
    real = read_card(folder).authorized[0].init_sha256
    (folder / "authorized" / f"{SPEC}.safetensors").write_bytes(other)
    card = folder / "README.md"
    card.write_text(card.read_text().replace(real, hashlib.sha256(other).hexdigest()))
    detail = failures(uge_hf.verify_release(folder))[f"weights {SPEC}"]
    assert "is not that of resnet18-w4-seed0 with 4 classes rebuilt here" in detail


def test_edited_hash_in_the_sidecar_json_fails(folder):
    sidecar = folder / "authorized" / f"{SPEC}.json"
    real = read_card(folder).authorized[0].init_sha256
    sidecar.write_text(sidecar.read_text().replace(real, "ab" * 32))
    detail = failures(uge_hf.verify_release(folder))[f"weights {SPEC}"]
    assert detail == f"authorized/{SPEC}.json declares init_sha256 {'ab' * 32}, the card {real}"


def test_changed_label_fails_with_original(folder, source):
    edit_rows(folder / TRAIN, lambda rows: rows[7].update(category=(rows[7]["category"] + 1) % 4))
    failed = failures(uge_hf.verify_release(folder, original=source))
    assert list(failed) == ["labels train"]
    assert f"labels changed: {TRAIN} row 7 (train row 7): 'cat', source 'frog'" == failed["labels train"]


def test_deleted_shard_fails(folder):
    table = pq.read_table(folder / TRAIN)  # re-shard train into two files, then lose one
    (folder / TRAIN).unlink()
    pq.write_table(table.slice(0, 16), folder / "data/train-00000-of-00002.parquet")
    failed = failures(uge_hf.verify_release(folder))
    assert list(failed) == ["shards train"]
    assert "missing shard(s) data/train-00001-of-00002.parquet" in failed["shards train"]
    assert "16 rows in the shards, the card says 32" in failed["shards train"]


def test_deleted_split_and_extra_split_fail(folder):
    (folder / "data/test-00000-of-00001.parquet").rename(folder / "data/extra-00000-of-00001.parquet")
    failed = failures(uge_hf.verify_release(folder))
    assert "data/ has no shard of it" in failed["shards test"]
    assert "a split the card does not list: extra-00000-of-00001.parquet" in failed["shards extra"]


def test_wrong_image_size_and_mode_fail(folder):
    def edit(rows):
        rows[1]["picture"] = {"bytes": png(np.zeros((17, 16, 3), np.uint8)), "path": None}
        rows[4]["picture"] = {"bytes": png(np.zeros((16, 16, 3), np.uint8), mode="L"), "path": None}

    edit_rows(folder / TRAIN, edit)
    detail = failures(uge_hf.verify_release(folder))["images train"]
    assert f"data/{Path(TRAIN).name} row 1: PNG RGB 17x16, expected PNG RGB 16x16" in detail
    assert "row 4: PNG L 16x16" in detail


def test_a_column_removed_from_a_shard_fails(folder):
    table = pq.read_table(folder / TRAIN)
    pq.write_table(table.drop_columns(["caption"]), folder / TRAIN)
    assert "has features" in failures(uge_hf.verify_release(folder))["shards train"]


def test_card_problems(folder):
    card = folder / "README.md"
    text = card.read_text()
    card.write_text(text.replace("  schema_version: 2\n", "  schema_version: 99\n"))
    (check,) = uge_hf.verify_release(folder)
    assert check.name == "card" and not check.ok and "schema version 99" in check.detail
    card.write_text(text.replace("  pixel_bound: 10\n", ""))
    assert "uge.pixel_bound is missing" in failures(uge_hf.verify_release(folder))["card"]
    card.unlink()
    assert "no README.md" in failures(uge_hf.verify_release(folder))["card"]


def test_resized_sources_compare_at_the_card_size(tmp_path):
    """Sources of 20x20 protected at 16x16: the bound is checked against the source resized as protect resized it."""
    source = DatasetDict(train=make_image_dataset(16, size=20, seed=3))
    release = tmp_path / "resized-uge"
    uge_hf.protect(source, output_dir=release, image_size=16, **{**TINY_OPTIONS, "generator_epochs": 1})
    checks = uge_hf.verify_release(release, original=source)
    assert not failures(checks)
    assert {c.name: c.detail for c in checks}["images train"] == "16 images, PNG RGB 16x16"


def test_missing_release_and_offline_hub_id_are_errors(tmp_path):
    with pytest.raises(UgeError, match="no such release folder"):
        uge_hf.verify_release(tmp_path / "absent")
    with pytest.raises(UgeError, match="offline mode is on .* not in the local HF cache"):
        uge_hf.verify_release("me/not-downloaded-uge")


def test_verify_command(made, folder, tmp_path):
    source, release = made
    original = tmp_path / "original"
    for split, ds in source.items():
        ds.to_parquet(str(original / "data" / f"{split}-00000-of-00001.parquet"))
    good = runner.invoke(app, ["verify", str(release), "--original", str(original)])
    assert good.exit_code == 0, good.output
    assert "PASS pixels train: 32 images within 10 levels" in good.output and "all 9 checks passed" in good.output
    assert good.output.count("PASS ") == 9 and "FAIL" not in good.output  # one line per check

    edit_rows(folder / TRAIN, lambda rows: rows[0].update(category=(rows[0]["category"] + 1) % 4))
    bad = runner.invoke(app, ["verify", str(folder), "--original", str(original)])
    assert bad.exit_code == 1
    assert f"FAIL labels train: labels changed: {TRAIN} row 0 (train row 0): 'dog', source 'cat'" in bad.output
    assert "1 of 9 checks failed" in bad.output and "Traceback" not in bad.output
    missing = runner.invoke(app, ["verify", str(tmp_path / "nope")])
    assert missing.exit_code == 1 and "error: no such release folder" in missing.output
