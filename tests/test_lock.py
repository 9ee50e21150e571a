"""The lock method: exact unlock for the key holder, nothing for anyone else, row binding, and the release around it."""

from __future__ import annotations

import shutil
import zlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from datasets import DatasetDict, load_dataset
from typer.testing import CliRunner

import uge_hf
from uge_hf.card import read_uge_block
from uge_hf.cli import app
from uge_hf.data import to_tensors
from uge_hf.errors import UgeError
from uge_hf.lock import LockKey, pack_residuals, row_binding, seal, unlock_pixels
from uge_hf.poisons import MODEL_FREE_POISONS, apply_poison, poison

from .conftest import CLASS_NAMES, LOCK_OPTIONS, make_image_dataset


def source_splits() -> DatasetDict:
    return DatasetDict(train=make_image_dataset(32, seed=0), test=make_image_dataset(12, seed=1))


def source_tensors(split: str = "train"):
    return to_tensors(source_splits()[split], "picture", "category", class_names=CLASS_NAMES)


def private_of(release: Path) -> Path:
    return release.parent / f"{release.name}.private"


def released_pixels(release: Path, split: str = "train") -> np.ndarray:
    ds = load_dataset(str(release), split=split)
    return np.stack([np.asarray(image.convert("RGB")) for image in ds["picture"]])


def saturated_images(n: int = 24) -> torch.Tensor:
    """Images full of 0 and 255 pixels, where clipping changes x + delta: the residual must still restore them."""
    rng = np.random.default_rng(3)
    images = rng.choice(np.array([0, 1, 5, 128, 250, 254, 255], dtype=np.uint8), size=(n, 3, 8, 8))
    return torch.from_numpy(images)


# --- the cipher and the poisons ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", MODEL_FREE_POISONS)
def test_every_poison_respects_the_bound_and_unlocks_exactly(kind):
    images, labels = saturated_images(), torch.arange(24) % 4
    delta = poison(kind, bytes(32), labels, 4, (3, 8, 8), 10)
    locked = apply_poison(images, delta)
    assert (locked.int() - images.int()).abs().max() <= 10
    assert (locked != images).any()
    key = LockKey(bytes(range(32)))
    bindings = [row_binding(row, int(label)) for row, label in zip(locked.numpy(), labels)]
    blobs = seal(key, pack_residuals(images, locked), bindings)
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    cipher = AESGCM(key.cipher_key)
    for i, blob in enumerate(blobs):
        assert np.array_equal(unlock_pixels(cipher, locked[i].numpy(), int(labels[i]), blob, f"row {i}"), images[i].numpy())


def test_a_poison_depends_on_the_row_not_on_the_chunking():
    labels = torch.arange(20) % 4
    whole = poison("autoregressive", bytes(32), labels, 4, (3, 8, 8), 10)
    parts = torch.cat([poison("autoregressive", bytes(32), labels[:7], 4, (3, 8, 8), 10, first_row=0),
                       poison("autoregressive", bytes(32), labels[7:], 4, (3, 8, 8), 10, first_row=7)])
    assert torch.equal(whole, parts)
    assert not torch.equal(whole, poison("autoregressive", bytes([1] * 32), labels, 4, (3, 8, 8), 10))


def test_unlock_data_tells_nothing_without_the_key():
    images, labels = saturated_images(40), torch.arange(40) % 4
    locked = apply_poison(images, poison("texture", bytes(32), labels, 4, (3, 8, 8), 10))
    key = LockKey(bytes(range(32)))
    blobs = seal(key, pack_residuals(images, locked), [row_binding(r, int(y)) for r, y in zip(locked.numpy(), labels)])
    assert len({len(blob) for blob in blobs}) == 1  # a blob's length says nothing about its image or class
    joined = b"".join(blob[13:] for blob in blobs)  # ciphertext and tags
    assert len(zlib.compress(joined, 9)) >= 0.99 * len(joined)  # incompressible: no structure left to find
    bits = np.unpackbits(np.frombuffer(joined, dtype=np.uint8))
    assert abs(bits.mean() - 0.5) < 0.02
    # deterministic: the same rows and key give the same bytes (synthetic nonces), another key other bytes
    assert blobs == seal(key, pack_residuals(images, locked), [row_binding(r, int(y)) for r, y in zip(locked.numpy(), labels)])
    other = seal(LockKey(bytes(32)), pack_residuals(images, locked), [row_binding(r, int(y)) for r, y in zip(locked.numpy(), labels)])
    assert not set(blobs) & set(other)


def test_a_wrong_key_an_edited_pixel_a_changed_label_and_a_moved_blob_are_refused():
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    images, labels = saturated_images(4), torch.tensor([0, 1, 2, 3])
    locked = apply_poison(images, poison("texture", bytes(32), labels, 4, (3, 8, 8), 10))
    key = LockKey(bytes(range(32)))
    blobs = seal(key, pack_residuals(images, locked), [row_binding(r, int(y)) for r, y in zip(locked.numpy(), labels)])
    right, wrong = AESGCM(key.cipher_key), AESGCM(LockKey(bytes(32)).cipher_key)
    pixels = locked[0].numpy()
    with pytest.raises(UgeError, match="train row 0: the unlock data does not open"):
        unlock_pixels(wrong, pixels, 0, blobs[0], "train row 0")
    edited = pixels.copy()
    edited[0, 0, 0] ^= 1
    with pytest.raises(UgeError, match="row 0: the unlock data does not open"):
        unlock_pixels(right, edited, 0, blobs[0], "row 0")
    with pytest.raises(UgeError, match="row 0: the unlock data does not open"):
        unlock_pixels(right, pixels, 1, blobs[0], "row 0")
    with pytest.raises(UgeError, match="row 0: the unlock data does not open"):
        unlock_pixels(right, pixels, 0, blobs[1], "row 0")
    flipped = bytearray(blobs[0])
    flipped[-1] ^= 1
    with pytest.raises(UgeError, match="does not open"):
        unlock_pixels(right, pixels, 0, bytes(flipped), "row 0")
    with pytest.raises(UgeError, match="missing or not uge-hf lock data"):
        unlock_pixels(right, pixels, 0, None, "row 0")


# --- the release ---------------------------------------------------------------------------------------------------


def test_a_lock_release_unlocks_bit_for_bit_and_keeps_the_key_private(lock_release):
    uge = read_uge_block(lock_release)
    assert uge["method"] == "lock" and uge["lock"]["poison"] == "texture-grey-apart"
    assert uge["results"]["unlock"]["rows_exact"] == uge["results"]["unlock"]["rows_checked"] == 32
    private = private_of(lock_release)
    assert (private / "key.json").is_file() and not list(lock_release.rglob("key.json"))
    assert (private / "key.json").stat().st_mode & 0o077 == 0
    # hackers read the release with datasets as it is: the images are poisoned, within the bound
    released = load_dataset(str(lock_release))
    assert released["train"].column_names == ["picture", "category", "caption", "unlock"]
    assert released["test"]["unlock"] == [None] * 12  # one schema for every split: unprotected rows hold null
    clean = source_tensors().images.permute(0, 2, 3, 1).numpy()
    protected = released_pixels(lock_release)
    assert 0 < np.abs(protected.astype(int) - clean).max() <= 10
    unlocked = uge_hf.unlock(lock_release, key=private)
    assert unlocked["train"].column_names == ["picture", "category", "caption"]
    assert np.array_equal(np.stack([np.asarray(i) for i in unlocked["train"]["picture"]]), clean)
    assert unlocked["train"]["caption"] == source_splits()["train"]["caption"]
    lazy = uge_hf.unlock(lock_release, key=private / "key.json", on_the_fly=True)["train"]
    assert np.array_equal(np.asarray(lazy[5]["picture"]), clean[5]) and "unlock" not in lazy[5]
    checks = uge_hf.verify_release(lock_release, original=source_splits(), key=private)
    assert all(c.ok for c in checks), [str(c) for c in checks if not c.ok]
    assert [c.name for c in checks if c.name.startswith("unlock")] == ["unlock train"]


def test_the_same_key_and_source_give_the_same_release_bytes(lock_release, tmp_path):
    again = tmp_path / "again"
    uge_hf.protect(source_splits(), output_dir=again, key_file=str(private_of(lock_release)),
                   **{k: v for k, v in LOCK_OPTIONS.items()})
    for shard in (lock_release / "data").glob("*.parquet"):
        assert pq.read_table(shard).equals(pq.read_table(again / "data" / shard.name)), shard.name
        assert shard.read_bytes() == (again / "data" / shard.name).read_bytes(), shard.name  # the files, byte for byte
    assert (private_of(again) / "key.json").read_bytes() == (private_of(lock_release) / "key.json").read_bytes()


def test_a_tampered_row_or_a_wrong_key_is_named(lock_release, tmp_path):
    copy = Path(shutil.copytree(lock_release, tmp_path / "copy"))
    shard = next((copy / "data").glob("train-*.parquet"))
    table = pq.read_table(shard)
    blobs = table.column("unlock").to_pylist()
    blobs[3], blobs[4] = blobs[4], blobs[3]  # two rows' unlock data swapped
    pq.write_table(table.set_column(table.schema.get_field_index("unlock"), "unlock", [blobs]), shard)
    with pytest.raises(UgeError, match="train row 3: the unlock data does not open"):
        uge_hf.unlock(copy, key=private_of(lock_release))
    failed = [c for c in uge_hf.verify_release(copy, key=private_of(lock_release)) if not c.ok]
    assert [c.name for c in failed] == ["unlock"] and "train row 3" in failed[0].detail

    other = tmp_path / "other"
    uge_hf.protect(source_splits(), output_dir=other, **LOCK_OPTIONS)
    with pytest.raises(UgeError, match="is not this release's key"):
        uge_hf.unlock(lock_release, key=private_of(other))
    keyed_key = tmp_path / "keyed.json"
    keyed_key.write_text((private_of(other) / "key.json").read_text().replace('"lock"', '"keyed"'))
    with pytest.raises(UgeError, match="a key of the keyed method; this needs a lock key"):
        uge_hf.unlock(lock_release, key=keyed_key)


def test_cli_unlock_writes_a_dataset_folder_and_refuses_a_wrong_key(lock_release, tmp_path):
    runner = CliRunner()
    out = tmp_path / "unlocked"
    result = runner.invoke(app, ["unlock", str(lock_release), "--key", str(private_of(lock_release)), "--output", str(out)])
    assert result.exit_code == 0, result.output
    written = load_dataset(str(out), split="train")
    clean = source_tensors().images.permute(0, 2, 3, 1).numpy()
    assert np.array_equal(np.stack([np.asarray(i) for i in written["picture"]]), clean)

    import json

    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({**json.loads((private_of(lock_release) / "key.json").read_text()), "secret": "ab" * 32}))
    result = runner.invoke(app, ["unlock", str(lock_release), "--key", str(wrong), "--output", str(tmp_path / "w")])
    assert result.exit_code == 1 and "is not this release's key" in result.output and not (tmp_path / "w").exists()
    result = runner.invoke(app, ["unlock", str(lock_release), "--key", str(tmp_path / "missing.json"), "--output", str(tmp_path / "x")])
    assert result.exit_code == 1 and "no key file at" in result.output and not (tmp_path / "x").exists()
    result = runner.invoke(app, ["unlock", str(tmp_path), "--key", str(private_of(lock_release)), "--output", str(tmp_path / "y")])
    assert result.exit_code == 1 and "error:" in result.output and "Traceback" not in result.output


def test_the_authorized_party_trains_on_the_unlocked_images(lock_release, tmp_path):
    with pytest.raises(UgeError, match="pass key=PATH"):
        uge_hf.train_authorized(lock_release, epochs=1)
    with pytest.raises(UgeError, match="has no shards for split.s. nope .it has"):  # was: KeyError 'nope'
        uge_hf.train_authorized(lock_release, key=private_of(lock_release), split="nope", epochs=1)
    model, metrics = uge_hf.train_authorized(lock_release, key=private_of(lock_release), epochs=1)
    assert metrics["method"] == "lock" and metrics["train_rows"] == 32 and metrics["test_split"] == "test"

    from uge_hf.evaluate import EvaluateConfig, evaluate

    config = EvaluateConfig(hackers=["lenet-w2-seed1"], distill=True, epochs=1, peak_epoch=False)
    with pytest.raises(UgeError, match="pass the key"):
        evaluate(lock_release, source_splits(), config, cache_dir=tmp_path / "cache")
    rows = evaluate(lock_release, source_splits(), config, cache_dir=tmp_path / "cache", key=private_of(lock_release))
    assert [(r.role, r.scheme) for r in rows] == [("authorized", "Normal"), ("hacker", "Normal"), ("hacker", "Wrong key"),
                                                   ("hacker", "No key"), ("hacker", "Distill")]
    authorized = rows[0]
    assert authorized.protected == authorized.clean  # the unlocked images are the clean ones: the same training


def test_lock_settings_are_checked_before_any_work(tmp_path):
    with pytest.raises(UgeError, match="lock.poison must be one of"):
        uge_hf.protect(source_splits(), output_dir=tmp_path / "a", method="lock", lock={"poison": "nope"})
    with pytest.raises(UgeError, match="needs an output folder"):
        uge_hf.protect(source_splits(), method="lock")
    with pytest.raises(UgeError, match="only applies to the keyed and lock methods"):
        uge_hf.protect(source_splits(), output_dir=tmp_path / "b", method="gradient-matching", key_file="k.json")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_cli_protect_lock_then_verify_with_the_key(tmp_path):
    source = tmp_path / "source"
    source_splits().save_to_disk(str(source))
    runner = CliRunner()
    out = tmp_path / "locked"
    result = runner.invoke(app, ["protect", str(source), "--method", "lock", "--lock-poison", "texture+blocks",
                                 "--authorized", "resnet18-w4-seed0", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "rows that unlock to their source exactly" in result.output and "32 of 32" in result.output
    assert read_uge_block(out)["lock"]["poison"] == "texture+blocks"
    result = runner.invoke(app, ["verify", str(out), "--key", str(private_of(out)), "--original", str(source)])
    assert result.exit_code == 0, result.output
    assert "unlock train: 32 rows unlock to the source images bit for bit" in result.output


# --- found by trying to break it (each a fault that was fixed) ------------------------------------------------------


def labelled_source(labels: list) -> DatasetDict:
    """The tiny source with its ClassLabel replaced by plain `labels` (strings, or ints that are not 0..K-1)."""
    from datasets import Value

    def relabel(split):
        values = [labels[i % len(labels)] for i in range(split.num_rows)]
        kind = Value("string") if isinstance(labels[0], str) else Value("int64")
        return split.remove_columns("category").add_column("category", values, feature=kind)

    return DatasetDict({name: relabel(split) for name, split in source_splits().items()})


@pytest.mark.parametrize("labels", [["cat", "dog", "ship"], [3, 7, 11]], ids=["strings", "sparse-ints"])
def test_a_release_whose_labels_are_not_class_indices_unlocks(labels, tmp_path):
    # was: the blob is bound to the class *index*, unlock bound the *stored* label: strings crashed with a
    # ValueError traceback, the ints 3, 7, 11 failed authentication on row 0: such a release could never be unlocked
    source = labelled_source(labels)
    out = tmp_path / "locked"
    uge_hf.protect(source, output_dir=out, label_column="category", **LOCK_OPTIONS)
    names = read_uge_block(out)["class_names"]
    clean = to_tensors(source["train"], "picture", "category", class_names=names).images.permute(0, 2, 3, 1).numpy()
    for on_the_fly in (False, True):
        train = uge_hf.unlock(out, key=private_of(out), on_the_fly=on_the_fly)["train"]
        assert np.array_equal(np.stack([np.asarray(train[i]["picture"]) for i in range(train.num_rows)]), clean)
        assert train["category"] == source["train"]["category"]
    assert all(c.ok for c in uge_hf.verify_release(out, original=source, key=private_of(out)))
    from uge_hf.evaluate import EvaluateConfig, evaluate

    # evaluate's wrong-key check bound the stored label too (a ValueError traceback for strings)
    config = EvaluateConfig(hackers=["lenet-w2-seed1"], epochs=1, peak_epoch=False)
    rows = evaluate(out, source, config, cache_dir=tmp_path / "cache", key=private_of(out))
    assert rows[0].role == "authorized" and rows[0].protected == rows[0].clean
    # a label the card does not know is named with its row, not a traceback
    copy = Path(shutil.copytree(out, tmp_path / "copy"))
    shard = next((copy / "data").glob("train-*.parquet"))
    table = pq.read_table(shard)
    column = table.column("category").to_pylist()
    column[2] = "owl" if isinstance(labels[0], str) else 5
    pq.write_table(table.set_column(table.schema.get_field_index("category"), "category", [column]), shard)
    with pytest.raises(UgeError, match=r"train row 2: its label .* is none of the card's 3 classes"):
        uge_hf.unlock(copy, key=private_of(out))


def test_on_the_fly_unlock_of_a_split_without_its_unlock_column_fails_at_once(lock_release, tmp_path):
    # was: a KeyError traceback ('unlock') at the first row read; the full unlock named the missing column
    copy = Path(shutil.copytree(lock_release, tmp_path / "copy"))
    shard = next((copy / "data").glob("train-*.parquet"))
    pq.write_table(pq.read_table(shard).drop(["unlock"]), shard)
    with pytest.raises(UgeError, match="split train of the release has no column unlock: it cannot be unlocked"):
        uge_hf.unlock(copy, key=private_of(lock_release), on_the_fly=True)


def test_cli_unlock_refuses_an_output_that_would_destroy_or_leak_into_the_release_or_the_key(lock_release, tmp_path):
    # was: `--output RELEASE/clean` wrote the clean images inside the release (published by the next push), and
    # `--output RELEASE --overwrite` or `--output KEYFOLDER --overwrite` replaced the release or deleted the key
    release = Path(shutil.copytree(lock_release, tmp_path / "release"))
    private = Path(shutil.copytree(private_of(lock_release), tmp_path / "release.private"))
    runner = CliRunner()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for output, extra, message in [
        (tmp_path / "busy", [], "is not empty: choose another or pass --overwrite"),
        (release / "clean", [], "is inside the release folder"),
        (release, ["--overwrite"], "is the release folder or holds it: --overwrite would delete the release"),
        (tmp_path, ["--overwrite"], "is the release folder or holds it"),
        (private, ["--overwrite"], "holds the key"),
    ]:
        result = runner.invoke(app, ["unlock", str(release), "--key", str(private), "--output", str(output), *extra])
        assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output, result.output
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    result = runner.invoke(app, ["unlock", str(release), "--key", str(private / "key.json"), "--output", str(private / "x")])
    assert result.exit_code == 0, result.output  # beside the key, inside its folder, is fine: nothing is replaced
    assert (private / "key.json").is_file()


def to_tensors_batch(batch: dict) -> dict:
    """A user's transform: PIL images to uint8 (C, H, W) tensors, so a DataLoader's default collate stacks them."""
    batch["picture"] = [torch.from_numpy(np.array(image)).permute(2, 0, 1) for image in batch["picture"]]
    return batch


def test_on_the_fly_unlock_takes_the_users_transform_and_feeds_a_dataloader_with_workers(lock_release):
    # was: the unlock is the split's set_transform, so the usual `with_format("torch")` (or a second set_transform)
    # silently replaced it and a DataLoader read the poisoned images; `transform=` now runs after the unlock
    from torch.utils.data import DataLoader

    clean = source_tensors().images
    lazy = uge_hf.unlock(lock_release, key=private_of(lock_release), on_the_fly=True, transform=to_tensors_batch)["train"]
    shuffled = lazy.shuffle(seed=0).filter(lambda row: row["category"] != 2)
    rows = [int(caption.split()[1]) for caption in shuffled["caption"]]
    loader = DataLoader(shuffled, batch_size=5, num_workers=2)
    images = torch.cat([batch["picture"] for batch in loader])
    assert torch.equal(images, clean[rows])
    full = uge_hf.unlock(lock_release, key=private_of(lock_release), transform=to_tensors_batch)["train"]
    assert torch.equal(full[0:4]["picture"][0], clean[0])
    with pytest.raises(UgeError, match="split train unlocks on the fly from its columns picture, category and unlock"):
        lazy.remove_columns("unlock")[0]


def test_a_source_with_an_unlock_column_is_refused_before_any_row_is_poisoned(tmp_path, monkeypatch):
    # was: refused only after every row of every split was poisoned and sealed (minutes on a large dataset)
    import uge_hf.methods.lock as lock_method

    def no_poison(*args, **kwargs):
        raise AssertionError("poisoned before the column check")

    monkeypatch.setattr(lock_method, "poison", no_poison)
    source = DatasetDict({name: split.add_column("unlock", ["mine"] * split.num_rows)
                          for name, split in source_splits().items()})
    with pytest.raises(UgeError, match="adds a column 'unlock', but split train already has one: rename it"):
        uge_hf.protect(source, output_dir=tmp_path / "out", **LOCK_OPTIONS)
    assert not (tmp_path / "out").exists()


def bad_keys(lock_release: Path, folder: Path) -> list[tuple[Path, str]]:
    """(key path, the message it must give): keys a user could pass by mistake, each refused in one line."""
    import json

    good = json.loads((private_of(lock_release) / "key.json").read_text())
    folder.mkdir()
    cases = {
        "truncated.json": ((private_of(lock_release) / "key.json").read_text()[:60], "is not a uge-hf key file"),
        "garbled.json": (json.dumps({**good, "secret": "zz" * 32}), "is not a uge-hf key file"),
        "classes.json": (json.dumps({**good, "num_classes": 10}), "was made for 10 classes; this dataset has 4"),
        "text-classes.json": (json.dumps({**good, "num_classes": "4"}), "has num_classes '4', not a whole number"),
        "keyed.json": (json.dumps({**good, "method": "keyed"}), "is a key of the keyed method; this needs a lock key"),
        "other.json": (json.dumps({**good, "secret": "ab" * 32}), "is not this release's key"),
    }
    out = []
    for name, (text, message) in cases.items():
        (folder / name).write_text(text)
        out.append((folder / name, message))
    (folder / "empty").mkdir()
    out.append((folder / "empty", "no key file at"))
    (folder / "dir-named-key" / "key.json").mkdir(parents=True)  # was: IsADirectoryError traceback
    out.append((folder / "dir-named-key", "cannot read the key file .*key.json: Is a directory"))
    return out


def test_every_bad_key_is_one_line_at_every_entry_point_and_writes_nothing(lock_release, tmp_path):
    import re

    from uge_hf.evaluate import EvaluateConfig, evaluate

    config = EvaluateConfig(hackers=["lenet-w2-seed1"], epochs=1, peak_epoch=False)
    runner = CliRunner()
    for key, message in bad_keys(lock_release, tmp_path / "keys"):
        with pytest.raises(UgeError, match=message):
            uge_hf.unlock(lock_release, key=key)
        with pytest.raises(UgeError, match=message):
            evaluate(lock_release, source_splits(), config, cache_dir=tmp_path / "cache", key=key)
        with pytest.raises(UgeError, match=message):
            uge_hf.unlock(lock_release, key=key, on_the_fly=True)
        with pytest.raises(UgeError, match=message):
            uge_hf.train_authorized(lock_release, key=key, epochs=1)
        failed = [c for c in uge_hf.verify_release(lock_release, key=key) if not c.ok]
        assert [c.name for c in failed] == ["unlock"] and re.search(message, failed[0].detail), (key, failed)
        out = tmp_path / "out"
        result = runner.invoke(app, ["unlock", str(lock_release), "--key", str(key), "--output", str(out)])
        assert result.exit_code == 1 and re.search(message, result.output), (key, result.output)
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
        assert not out.exists() and not list(tmp_path.glob(".out*"))


def rewrite_train_shard(release: Path, tmp_path: Path, edit) -> Path:
    """A copy of `release` whose train shard is `edit(table)`."""
    copy = Path(shutil.copytree(release, tmp_path / "copy"))
    shard = next((copy / "data").glob("train-*.parquet"))
    pq.write_table(edit(pq.read_table(shard)), shard)
    return copy


def test_a_deleted_row_is_refused_but_re_encoded_shards_still_unlock(lock_release, tmp_path):
    # was: a row deleted from a shard unlocked silently (every other blob opens on its own): 31 of 32 rows back
    copy = rewrite_train_shard(lock_release, tmp_path, lambda table: table.take([i for i in range(32) if i != 4]))
    for on_the_fly in (False, True):
        with pytest.raises(UgeError, match="split train of the release has 31 rows, its card says 32: rows were deleted"):
            uge_hf.unlock(copy, key=private_of(lock_release), on_the_fly=on_the_fly)
    shutil.rmtree(copy)

    import io

    from PIL import Image

    def resave(table):  # the same pixels, other PNG bytes (another compressor setting, an RGBA copy)
        images = table.column("picture").to_pylist()
        for i, value in enumerate(images):
            image, buffer = Image.open(io.BytesIO(value["bytes"])), io.BytesIO()
            (image.convert("RGBA") if i % 2 else image).save(buffer, format="PNG", compress_level=1)
            assert buffer.getvalue() != value["bytes"]
            images[i] = {**value, "bytes": buffer.getvalue()}
        table = table.set_column(table.schema.get_field_index("picture"), "picture", [images])
        # and, as a shard rewritten by pandas or pyarrow, without datasets' feature metadata: was an AttributeError
        # traceback (images read as {bytes, path} dicts), on the fly "label 0 is none of the card's classes"
        return table.replace_schema_metadata(None)

    copy = rewrite_train_shard(lock_release, tmp_path, resave)
    clean = source_tensors().images.permute(0, 2, 3, 1).numpy()
    for on_the_fly in (False, True):
        train = uge_hf.unlock(copy, key=private_of(lock_release), on_the_fly=on_the_fly)["train"]
        assert np.array_equal(np.stack([np.asarray(train[i]["picture"]) for i in range(32)]), clean)


def test_mixed_modes_and_sizes_two_protected_splits_and_a_wide_bound_unlock_to_what_protect_decoded(tmp_path):
    # not a fault found, a guard: grey, RGBA, palette and RGB images of several sizes (resized to one training size),
    # two protected splits, a dropped third, and a bound over 127 levels (the int16 residuals)
    from datasets import Dataset, Features, Image, Value
    from PIL import Image as PILImage

    rng = np.random.default_rng(0)

    def split(rows: int) -> Dataset:
        images = []
        for i in range(rows):
            height, width = [(16, 16), (20, 12), (9, 31)][i % 3]
            image = PILImage.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
            images.append(image.convert(["RGB", "L", "RGBA", "P"][i % 4]))
        return Dataset.from_dict({"image": images, "label": [str(i % 2) for i in range(rows)]},
                                 features=Features({"image": Image(), "label": Value("string")}))

    source = DatasetDict(train=split(12), test=split(6), extra=split(3))
    out = tmp_path / "locked"
    uge_hf.protect(source, output_dir=out, splits=["train", "test"], keep_other_splits=False, rho=0.6,
                   **LOCK_OPTIONS)
    card = read_uge_block(out)
    assert card["pixel_bound"] == 153 and card["protected_splits"] == ["train", "test"]
    for on_the_fly in (False, True):
        unlocked = uge_hf.unlock(out, key=private_of(out), on_the_fly=on_the_fly)
        assert sorted(unlocked) == ["test", "train"]
        for name in ("train", "test"):
            decoded = to_tensors(source[name], "image", "label", tuple(card["input"]["image_size"]), card["class_names"])
            got = np.stack([np.asarray(unlocked[name][i]["image"]) for i in range(unlocked[name].num_rows)])
            assert np.array_equal(got, decoded.images.permute(0, 2, 3, 1).numpy()), (name, on_the_fly)


def test_on_the_fly_unlock_follows_a_cast_label_and_explains_a_flattened_split(lock_release):
    # was: a ClassLabel cast to strings ("0", "1", ...) on the fly failed "label '0' is none of the card's classes";
    # `flatten_indices` (an identity map through the transform) stores unlocked images beside their blobs, which
    # then fail with a message that did not say why
    from datasets import Value

    clean = source_tensors().images.permute(0, 2, 3, 1).numpy()
    lazy = uge_hf.unlock(lock_release, key=private_of(lock_release), on_the_fly=True)["train"]
    cast = lazy.cast_column("category", Value("string"))
    assert cast[5]["category"] == "1" and np.array_equal(np.asarray(cast[5]["picture"]), clean[5])
    flat = lazy.select([3, 1]).flatten_indices()
    with pytest.raises(UgeError, match=r"read on the fly: the unlock data does not open.*a map that rewrote the image or"
                                       r" label column, or flatten_indices, does that: unlock without on_the_fly"):
        flat[0]


LOADED_OPERATIONS = {
    "shuffle": lambda d: d.shuffle(seed=1),
    "select": lambda d: d.select([7, 2, 30]),
    "filter": lambda d: d.filter(lambda row: row["category"] == 1),
    "train_test_split": lambda d: d.train_test_split(test_size=0.25, seed=0)["test"],
    "cast": lambda d: d.cast_column("caption", __import__("datasets").Value("large_string")),
    "torch-format": lambda d: d.with_format("torch"),
    "flatten_indices": lambda d: d.shuffle(seed=3).flatten_indices(),
}


def load_fresh(release: Path, tmp_path: Path, **kwargs):
    """load_dataset(release) with a cache of its own: datasets' cache (~/.cache, shared by every test session) keys a
    local folder by its name and card, and each session's "cifar-lock" has another key, so a stale entry from an
    earlier session would hand back its blobs (which then, rightly, do not open with this session's key)."""
    return load_dataset(str(release), cache_dir=str(tmp_path / "hf-cache"), **kwargs)


@pytest.mark.parametrize("operation", LOADED_OPERATIONS)
def test_a_release_loaded_and_transformed_with_datasets_unlocks(lock_release, operation, tmp_path):
    # was: uge_hf.unlock took only a folder or Hub id (a loaded Dataset was a TypeError traceback): a key holder who
    # had loaded, shuffled or filtered the release had to start again; now it takes the dataset and card=
    clean = source_tensors().images.permute(0, 2, 3, 1).numpy()
    changed = LOADED_OPERATIONS[operation](load_fresh(lock_release, tmp_path, split="train"))
    for on_the_fly in (False, True):
        unlocked = uge_hf.unlock(changed, key=private_of(lock_release), card=lock_release, on_the_fly=on_the_fly)
        rows = [int(caption.split()[1]) for caption in unlocked["caption"]]
        assert np.array_equal(np.stack([np.asarray(unlocked[i]["picture"]) for i in range(len(rows))]), clean[rows])


def test_unlocking_a_loaded_release_needs_its_card_and_the_key(lock_release, tmp_path):
    loaded = load_fresh(lock_release, tmp_path)
    with pytest.raises(UgeError, match="a loaded dataset carries no card: pass card="):
        uge_hf.unlock(loaded, key=private_of(lock_release))
    with pytest.raises(UgeError, match="cannot unlock a list: pass a lock release folder or Hub id"):
        uge_hf.unlock([1, 2], key=private_of(lock_release))
    unlocked = uge_hf.unlock(loaded, key=private_of(lock_release), card=lock_release)
    assert unlocked["train"].column_names == unlocked["test"].column_names == ["picture", "category", "caption"]
    clean = source_tensors().images.permute(0, 2, 3, 1).numpy()
    assert np.array_equal(np.stack([np.asarray(i) for i in unlocked["train"]["picture"]]), clean)
    for key, message in bad_keys(lock_release, tmp_path / "keys"):
        with pytest.raises(UgeError, match=message):
            uge_hf.unlock(loaded["train"], key=key, card=lock_release)
    swapped = loaded["train"].select([1, 0]).remove_columns("unlock").add_column(
        "unlock", loaded["train"].select([0, 1])["unlock"])  # rows reordered, their blobs not
    with pytest.raises(UgeError, match="dataset row 0: the unlock data does not open"):
        uge_hf.unlock(swapped, key=private_of(lock_release), card=lock_release)


def test_cli_unlock_of_a_hub_id_offline_is_one_clear_line(lock_release, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = CliRunner().invoke(app, ["unlock", "someone/not-cached-uge", "--key", str(private_of(lock_release)),
                                      "--output", str(tmp_path / "out")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "offline mode is on (HF_HUB_OFFLINE is set), and it is not in the local HF cache" in result.output
    assert not (tmp_path / "out").exists()


def test_a_key_path_with_a_tilde_is_the_home_folders(lock_release, tmp_path, monkeypatch):
    # was: "no key file at ~/key.json" from Python (only a shell expanded the tilde)
    monkeypatch.setenv("HOME", str(tmp_path))
    shutil.copy(private_of(lock_release) / "key.json", tmp_path / "key.json")
    assert uge_hf.unlock(lock_release, key="~/key.json")["train"].num_rows == 32


def test_a_rows_unlock_data_does_not_depend_on_the_rows_beside_it():
    source = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    protected = source.clone()
    protected[0] += 200  # a residual beyond int8 in the first row only
    protected[1, 0, 0, 0] = 3
    together = pack_residuals(source, protected)
    assert together[1] == pack_residuals(source[1:], protected[1:])[0]
    assert zlib.decompress(together[0])[0] == 2 and zlib.decompress(together[1])[0] == 1
