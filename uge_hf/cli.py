"""The `uge-hf` command line: parse, call the library, print. A user mistake is one line on stderr, exit code 1."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from .errors import UgeError

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Ungeneralizable examples for Hugging Face datasets.")


def _user_errors(command):
    """Print UgeError as one line instead of a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except UgeError as error:
            typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
            raise typer.Exit(1) from None

    return wrapper


def _parse_settings(settings: list[str]) -> dict:
    """`--set key=value` pairs (value as JSON when it parses, else a string); `recipe.x=1` sets a recipe field."""
    values: dict = {}
    for item in settings:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UgeError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        *parents, leaf = key.split(".")
        target = values
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    return values


@app.command()
@_user_errors
def protect(
    dataset: Annotated[str, typer.Argument(help="Local dataset folder or Hub id (e.g. cifar10)")],
    authorized: Annotated[Optional[list[str]], typer.Option(help="Authorized network ARCH[-wWIDTH]-seedN; repeat for several")] = None,
    encoder: Annotated[Optional[str], typer.Option(help="CLIP Hub id or local path, or 'surrogate'")] = None,
    rho: Annotated[Optional[float], typer.Option(help="L-inf bound on [0, 1] pixels")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the generator and its sampling")] = None,
    trajectory_epochs: Annotated[Optional[int], typer.Option(help="Epochs of the authorized recipe (trajectory)")] = None,
    generator_epochs: Annotated[Optional[int], typer.Option(help="Epochs of generator training")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Per-process batch of generator training")] = None,
    split: Annotated[Optional[list[str]], typer.Option(help="Split(s) to protect; G is trained on the first")] = None,
    image_column: Annotated[Optional[str], typer.Option(help="Image column (default: detected)")] = None,
    label_column: Annotated[Optional[str], typer.Option(help="Label column (default: detected)")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Square training resolution (default: most common size)")] = None,
    mixed_precision: Annotated[Optional[str], typer.Option(help="no, fp16 or bf16")] = None,
    output: Annotated[Optional[Path], typer.Option(help="Release folder (default: ./NAME-uge)")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty output folder")] = False,
    config: Annotated[Optional[Path], typer.Option(help="A ProtectConfig JSON (e.g. a release's uge_config.json)")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Any config field: --set lambda_fd=2 --set recipe.lr=0.1")] = None,
    push: Annotated[Optional[str], typer.Option(help="Hub repo id to publish the release to")] = None,
) -> None:
    """Protect DATASET so that only the authorized network(s) learn well from it; write a release folder."""
    from .config import ProtectConfig
    from .pipeline import protect as run_protect

    if push is not None:
        raise UgeError("--push is not available yet in this version: publish the release folder with huggingface-cli upload")
    values = ProtectConfig().to_dict()
    if config is not None:
        if not config.is_file():
            raise UgeError(f"no config file at {config}")
        values.update(json.loads(config.read_text()))
    for key, value in _parse_settings(set_ or []).items():
        values[key] = {**values[key], **value} if key == "recipe" and isinstance(value, dict) else value
    options = {
        "authorized": authorized, "encoder": encoder, "rho": rho, "seed": seed, "generator_epochs": generator_epochs,
        "batch_size": batch_size, "splits": split, "image_column": image_column, "label_column": label_column,
        "image_size": image_size, "mixed_precision": mixed_precision,
    }
    values.update({key: value for key, value in options.items() if value not in (None, [])})
    if trajectory_epochs is not None:
        values["recipe"] = {**values["recipe"], "epochs": trajectory_epochs}
    output = output or Path(f"{Path(dataset).name}-uge")
    run_protect(dataset, output_dir=output, config=ProtectConfig.from_dict(values), overwrite=overwrite)
    if _is_main_process():
        _print_summary(output)


def _is_main_process() -> bool:
    from .progress import is_main_process

    return is_main_process()


def _print_summary(release: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    from .card import read_uge_block

    uge = read_uge_block(release)
    results = uge["results"]
    console = Console(soft_wrap=True)  # paths and hashes are copied from here: never wrap them
    console.print(f"release written to {release.resolve()}")
    for net in uge["authorized"]:
        console.print(f"authorized {net['spec']}: init sha256 {net['init_sha256']}")
    table = Table(title="measured on the release")
    table.add_column("figure")
    table.add_column("value")
    for split, stats in results["perturbation"].items():
        table.add_row(f"{split}: max |diff| / bound (levels)", f"{stats['linf_levels']:.0f} / {uge['pixel_bound']}")
        table.add_row(f"{split}: mean |diff| (levels), PSNR", f"{stats['mean_abs_levels']}, {stats['psnr_db']} dB")
    for net in results["authorized"]:
        table.add_row(f"{net['spec']} clean train / protected train acc",
                      f"{net['clean_train_accuracy']} / {net['protected_train_accuracy']}")
        if net["clean_test_accuracy"] is not None:
            table.add_row(f"{net['spec']} clean test acc ({results['test_split']})", str(net["clean_test_accuracy"]))
    table.add_row("encoder feature cosine clean vs protected", str(results["feature_cosine"]))
    table.add_row("final losses", ", ".join(f"{k} {v}" for k, v in results["final_losses"].items()))
    console.print(table)


@app.command("init-hash")
@_user_errors
def init_hash(
    spec: Annotated[str, typer.Argument(help="ARCH[-wWIDTH]-seedN, e.g. resnet18-seed0")],
    num_classes: Annotated[int, typer.Option(help="Number of classes of the dataset")],
    image_size: Annotated[Optional[int], typer.Option(help="Accepted for symmetry: the zoo's weights do not depend on it")] = None,
) -> None:
    """Print the sha256 of SPEC's initial weights, to compare with a release card."""
    from .specs import init_sha256

    if image_size is not None and image_size < 16:
        raise UgeError(f"image size must be >= 16, got {image_size}")
    typer.echo(init_sha256(spec, num_classes))


def main() -> None:  # pragma: no cover - console entry point
    app(prog_name="uge-hf")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
