"""The CLI through typer's CliRunner, and a two-process run through torchrun."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import DatasetDict, load_dataset
from typer.testing import CliRunner

from uge_hf.cli import app
from uge_hf.specs import init_sha256

from .conftest import make_image_dataset

runner = CliRunner()

TINY_FLAGS = [
    "--method", "gradient-matching", "--set", "publish_authorized=true", "--authorized", "resnet18-w4-seed0", "--encoder", "surrogate", "--trajectory-epochs", "1",
    "--generator-epochs", "1", "--batch-size", "8", "--set", "recipe.batch_size=8", "--set", "generator_channels=4",
    "--set", "generator_blocks=1", "--set", "surrogate_epochs=1", "--set", "undistill_hacker=lenet-w2-seed1",
]


@pytest.fixture
def dataset_folder(tmp_path) -> Path:
    folder = tmp_path / "source"
    for split, rows, seed in (("train", 24, 0), ("test", 8, 1)):
        make_image_dataset(rows, seed=seed).to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    return folder


def test_protect_command_writes_a_release_and_prints_its_figures(dataset_folder, tmp_path):
    output = tmp_path / "release"
    result = runner.invoke(app, ["protect", str(dataset_folder), *TINY_FLAGS, "--output", str(output)])
    assert result.exit_code == 0, result.output
    assert f"release written to {output.resolve()}" in result.output
    assert f"init sha256 {init_sha256('resnet18-w4-seed0', 4)}" in result.output
    assert "train: max |diff| / bound (levels)" in result.output and "/ 10" in result.output
    loaded = load_dataset(str(output))
    assert loaded["train"].num_rows == 24
    weights = (output / "authorized" / "resnet18-w4-seed0.safetensors").read_bytes()
    assert hashlib.sha256(weights).hexdigest() == init_sha256("resnet18-w4-seed0", 4)


def test_protect_command_prints_from_the_result_not_from_the_folder(tiny_release, tmp_path, monkeypatch):
    """The summary comes from protect()'s ProtectResult: nothing is read back from a README.md."""
    import dataclasses

    import uge_hf.pipeline
    from uge_hf.card import read_card
    from uge_hf.pipeline import ProtectResult

    card = read_card(tiny_release)
    card = dataclasses.replace(card, pixel_bound=77)  # a figure the folder's card does not hold
    fake = ProtectResult(None, card, tmp_path / "nowhere", tmp_path / "nowhere.private")
    monkeypatch.setattr(uge_hf.pipeline, "protect", lambda *args, **kwargs: fake)
    result = runner.invoke(app, ["protect", str(tmp_path), "--output", str(tmp_path / "nowhere")])
    assert result.exit_code == 0, result.output
    assert f"release written to {tmp_path / 'nowhere'}" in result.output and "/ 77" in result.output
    assert f"private key and authorized weights: {tmp_path / 'nowhere.private'}" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--authorized", "resnet99-seed0"], "resnet99"),
        (["--rho", "0"], "rho"),
        (["--split", "nope"], "no split named nope"),
        (["--set", "lambda_fd"], "KEY=VALUE"),
        (["--set", "no_such_field=1"], "unknown config fields"),
        (["--push", "me/data"], "--push"),
        (["--set", "recipe.lr=1e6"], "lower the recipe's learning rate (recipe.lr = 1000000.0)"),
    ],
)
def test_user_mistakes_are_one_line_errors(dataset_folder, tmp_path, args, message):
    result = runner.invoke(app, ["protect", str(dataset_folder), *TINY_FLAGS, *args, "--output", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


def test_missing_dataset_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["protect", str(tmp_path / "absent"), "--output", str(tmp_path / "o")])
    assert result.exit_code == 1 and "error:" in result.output and "Traceback" not in result.output


def test_init_hash_command_matches_the_library():
    result = runner.invoke(app, ["init-hash", "cnn-w8-seed3", "--num-classes", "7"])
    assert result.exit_code == 0
    assert result.output.strip() == init_sha256("cnn-w8-seed3", 7)
    bad = runner.invoke(app, ["init-hash", "cnn-seedX", "--num-classes", "7"])
    assert bad.exit_code == 1 and "error:" in bad.output


@pytest.mark.slow
def test_two_processes_with_torchrun(tmp_path):
    """Two CPU processes (gloo): G is trained with DDP and the main process alone writes the release."""
    script = tmp_path / "run.py"
    script.write_text(
        "import sys, torch.distributed as dist, datasets, uge_hf\n"
        f"sys.path.insert(0, {str(Path(__file__).parents[1])!r})\n"
        "from tests.conftest import make_image_dataset, TINY_OPTIONS\n"
        "ds = datasets.DatasetDict(train=make_image_dataset(32, seed=0))\n"
        "out = uge_hf.protect(ds, output_dir=sys.argv[1], **TINY_OPTIONS)\n"
        "assert dist.is_initialized() and dist.get_world_size() == 2\n"
        "open(f'{sys.argv[2]}/rank{dist.get_rank()}.txt', 'w').write(type(out).__name__)\n"
    )
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533"]
    env = {**os.environ, "UGE_HF_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*torchrun, str(script), str(tmp_path / "release"), str(tmp_path)], capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # One file per rank: the two processes' stdout can interleave ("rankrank 0 returned ...").
    assert (tmp_path / "rank0.txt").read_text() == "ProtectResult" and (tmp_path / "rank1.txt").read_text() == "NoneType"
    assert load_dataset(str(tmp_path / "release"))["train"].num_rows == 32


def test_odd_inputs_are_one_line_errors_before_any_training(tmp_path):
    """Images under 16 px, and a test split whose label is not a training class: one line, nothing written."""
    from datasets import Dataset

    folder = tmp_path / "small"
    make_image_dataset(8, size=8).to_parquet(str(folder / "data" / "train-00000-of-00001.parquet"))
    result = runner.invoke(app, ["protect", str(folder), *TINY_FLAGS, "--output", str(tmp_path / "o")])
    assert result.exit_code == 1 and "pass --image-size 16" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.uge-work").exists()

    folder = tmp_path / "strings"
    for split, labels in (("train", ["a", "b"] * 4), ("test", ["a", "c"])):
        rows = make_image_dataset(len(labels), extra_column=False).remove_columns("category").add_column("label", labels)
        Dataset.from_dict(rows.to_dict(), features=rows.features).to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    result = runner.invoke(app, ["protect", str(folder), *TINY_FLAGS, "--output", str(tmp_path / "o")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "split 'test', row 1, column 'label': label 'c' is not one of the 2 classes of split 'train'" in result.output
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.uge-work").exists()


def test_version_and_short_help():
    from uge_hf import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"uge-hf {__version__}"
    result = runner.invoke(app, ["protect", "-h"])
    assert result.exit_code == 0 and "--method" in result.output and "--key" in result.output
