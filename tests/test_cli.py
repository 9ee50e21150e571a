"""The CLI through typer's CliRunner, and a two-process run through torchrun."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import load_dataset
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


def test_every_config_field_is_an_option_with_its_default_in_the_help():
    import dataclasses

    from uge_hf.cli import config_options
    from uge_hf.config import ProtectConfig

    options = {option.path: option for option in config_options(ProtectConfig)}
    leaves = set()
    for f in dataclasses.fields(ProtectConfig):
        value = getattr(ProtectConfig(), f.name)
        leaves |= {(f.name, g.name) for g in dataclasses.fields(value)} if dataclasses.is_dataclass(value) else {(f.name,)}
    assert set(options) == leaves  # every field, nested ones included, and nothing else
    result = runner.invoke(app, ["protect", "--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0
    for option in options.values():
        assert option.flags[0] in result.output and option.help.split()[0] in result.output, option.path
    assert "[default: (keyed)]" in result.output and "gradient-matching|keyed" in result.output  # default, choices
    assert "--recipe-lr" in result.output and "--keyed-tile" in result.output and "--trajectory-epochs" in result.output


def test_options_reach_the_config_and_override_set_and_the_config_file(tmp_path, monkeypatch):
    import json

    import uge_hf.pipeline

    seen = {}
    monkeypatch.setattr(uge_hf.pipeline, "protect", lambda dataset, config, **kwargs: seen.update(config=config))  # None: nothing to print
    (tmp_path / "c.json").write_text(json.dumps({"rho": 0.02, "seed": 5, "recipe": {"lr": 0.2, "epochs": 3}}))
    result = runner.invoke(app, [
        "protect", "data", "--config", str(tmp_path / "c.json"), "--set", "seed=6", "--set", "keyed.grain=2",
        "--rho", "0.05", "--keyed-tile", "4", "--recipe-epochs", "2", "--keyed-signs", "fixed", "--no-keep-other-splits",
        "--split", "train", "--split", "extra", "--key", "k.json", "--recipe-schedule", "constant",
    ])
    assert result.exit_code == 0, result.output
    config = seen["config"]
    assert (config.rho, config.seed, config.keep_other_splits, config.splits) == (0.05, 6, False, ["train", "extra"])
    assert (config.recipe.lr, config.recipe.epochs, config.recipe.schedule) == (0.2, 2, "constant")
    assert (config.keyed.tile, config.keyed.grain, config.keyed.signs, config.key_file) == (4, 2, "fixed", "k.json")
    bad = runner.invoke(app, ["protect", "data", "--solver", "nope"])
    assert bad.exit_code == 2 and "nope" in bad.output and "generator" in bad.output  # choices checked by click


def test_a_new_config_field_is_a_new_option_without_a_cli_edit():
    import dataclasses

    import typer

    from uge_hf.cli import with_config_options
    from uge_hf.config import ProtectConfig, knob

    @dataclasses.dataclass
    class Extended(ProtectConfig):
        dither_levels: int = knob(3, "levels of a made-up dither")

    got = {}
    extended = typer.Typer()

    @extended.command()
    @with_config_options(Extended)
    def run(dataset: str, **fields) -> None:
        got.update(fields)

    result = runner.invoke(extended, ["--help"], env={"COLUMNS": "250"})
    assert "--dither-levels" in result.output and "levels of a made-up dither" in result.output
    assert "[default: (3)]" in result.output
    assert runner.invoke(extended, ["data", "--dither-levels", "5"]).exit_code == 0 and got["dither_levels"] == 5


# what a bar prints (tqdm's rates and frames, rich's elapsed time, the bars' descriptions), not a table's borders
BAR_MARKS = ("█", "it/s", "ba/s", "examples/s", "%|", "0:00:0", "Decoding images", "protecting train",
             "Creating parquet", "embedding images", "writing protected", "Generating")


def test_no_progress_silences_every_bar_and_bars_show_without_it(dataset_folder, tmp_path, monkeypatch):
    """`uge-hf --no-progress` (= UGE_HF_NO_PROGRESS=1): no bar of uge-hf's, datasets' or huggingface_hub's. The
    control run without it shows them, so the check can see a bar when there is one; either way the libraries'
    own switches are given back as they were."""
    import datasets.utils
    import huggingface_hub.utils

    monkeypatch.delenv("UGE_HF_NO_PROGRESS", raising=False)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    keyed = ["--method", "keyed", "--authorized", "resnet18-w4-seed0", "--keyed-tile", "4", "--keyed-groups", "6",
             "--keyed-grain", "2", "--set", "recipe.batch_size=8"]
    shown = runner.invoke(app, ["protect", str(dataset_folder), *keyed, "--output", str(tmp_path / "shown")])
    assert shown.exit_code == 0, shown.output
    assert any(mark in shown.output for mark in BAR_MARKS), shown.output

    quiet = runner.invoke(app, ["--no-progress", "protect", str(dataset_folder), *keyed, "--output", str(tmp_path / "quiet")])
    assert quiet.exit_code == 0, quiet.output
    assert not [mark for mark in BAR_MARKS if mark in quiet.output], quiet.output
    assert "release written to" in quiet.output
    assert not datasets.utils.are_progress_bars_disabled() and not huggingface_hub.utils.are_progress_bars_disabled()


def test_the_environment_switch_silences_the_python_api(tmp_path, monkeypatch, capfd):
    import uge_hf

    from .conftest import KEYED_OPTIONS

    monkeypatch.setenv("UGE_HF_NO_PROGRESS", "1")
    source = make_image_dataset(24, seed=0)
    uge_hf.protect(source, output_dir=tmp_path / "release", **KEYED_OPTIONS)
    uge_hf.verify_release(tmp_path / "release")
    captured = capfd.readouterr()
    assert not [mark for mark in BAR_MARKS if mark in captured.out + captured.err], captured


def test_protect_streaming_reads_the_folder_as_a_stream_and_writes_the_map_style_bytes(dataset_folder, tmp_path):
    """--streaming (load_dataset(..., streaming=True)) with the lock method, shard by shard: the release of the
    same key is byte for byte the map-style one; the paper's method refuses a stream in one line."""
    flags = ["--method", "lock", "--authorized", "resnet18-w4-seed0", "--shard-rows", "10"]
    first = runner.invoke(app, ["protect", str(dataset_folder), *flags, "--output", str(tmp_path / "map")])
    assert first.exit_code == 0, first.output
    key = str(tmp_path / "map.private" / "key.json")
    streamed = runner.invoke(app, ["protect", str(dataset_folder), *flags, "--streaming", "--key-file", key,
                                   "--output", str(tmp_path / "stream")])
    assert streamed.exit_code == 0, streamed.output
    files = sorted(p.relative_to(tmp_path / "map") for p in (tmp_path / "map").rglob("*") if p.is_file())
    assert "data/train-00002-of-00003.parquet" in map(str, files)
    for path in files:
        assert (tmp_path / "map" / path).read_bytes() == (tmp_path / "stream" / path).read_bytes(), path
    refused = runner.invoke(app, ["protect", str(dataset_folder), *TINY_FLAGS, "--streaming", "--output",
                                  str(tmp_path / "gm")])
    assert refused.exit_code == 1 and "cannot read a streaming source: pass a map-style Dataset" in refused.output
    assert len(refused.output.strip().splitlines()) == 1
