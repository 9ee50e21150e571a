"""The `uge-hf` command line: parse, call the library, print. A user mistake is one line on stderr, exit code 1."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from .errors import UgeError

if TYPE_CHECKING:
    from .pipeline import ProtectResult

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Ungeneralizable examples for Hugging Face datasets.",
                  context_settings={"help_option_names": ["-h", "--help"]})


def _version(value: bool) -> None:
    if value:
        from .version import __version__

        typer.echo(f"uge-hf {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit")] = False,
) -> None:
    """Ungeneralizable examples for Hugging Face datasets: protect, evaluate, verify, push, demo."""


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
    method: Annotated[Optional[str], typer.Option(help="keyed (a secret key stage removes the perturbation for the authorized network) or gradient-matching (the paper's UGE)  [default: keyed]")] = None,
    key: Annotated[Optional[Path], typer.Option(help="keyed: reuse this key (an OUTPUT.private folder or its key.json) instead of drawing one")] = None,
    publish_authorized: Annotated[bool, typer.Option(help="gradient-matching: publish the authorized init weights in the release (reproduction studies) instead of a secret init in OUTPUT.private/")] = False,
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
    push: Annotated[Optional[str], typer.Option(help="Hub dataset repo OWNER/NAME to publish the release to (one commit)")] = None,
    private: Annotated[bool, typer.Option(help="With --push: create the repo private")] = False,
    revision: Annotated[Optional[str], typer.Option(help="With --push: the branch to commit to (created if missing)")] = None,
) -> None:
    """Protect DATASET so that only the authorized network(s) learn well from it; write a release folder."""
    from .config import ProtectConfig
    from .pipeline import protect as run_protect

    # --- Hub release (#4): check what a push can check offline before any training ---
    if push is None and (private or revision is not None):
        raise UgeError("--private and --revision only apply with --push OWNER/NAME")
    if push is not None:
        from .hub import check_push_ready

        try:
            check_push_ready(push)
        except UgeError as e:
            raise UgeError(f"--push {push}: {e}") from None
    # --- end Hub release ---
    values = ProtectConfig().to_dict()
    if config is not None:
        if not config.is_file():
            raise UgeError(f"no config file at {config}")
        values.update(json.loads(config.read_text()))
    for name, value in _parse_settings(set_ or []).items():  # nested settings (recipe.lr, keyed.tile) merge
        values[name] = {**values[name], **value} if isinstance(values.get(name), dict) and isinstance(value, dict) else value
    options = {
        "method": method, "key_file": str(key) if key is not None else None,
        "publish_authorized": publish_authorized or None,
        "authorized": authorized, "encoder": encoder, "rho": rho, "seed": seed, "generator_epochs": generator_epochs,
        "batch_size": batch_size, "splits": split, "image_column": image_column, "label_column": label_column,
        "image_size": image_size, "mixed_precision": mixed_precision,
    }
    values.update({name: value for name, value in options.items() if value not in (None, [])})
    if trajectory_epochs is not None:
        values["recipe"] = {**values["recipe"], "epochs": trajectory_epochs}
    output = output or Path(f"{Path(dataset).name}-uge")
    result = run_protect(dataset, output_dir=output, config=ProtectConfig.from_dict(values), overwrite=overwrite)
    if result is not None:  # the main process (the others of a multi-process run get None)
        _print_summary(result)
        if push is not None:  # Hub release (#4)
            try:
                _push_and_report(output, push, private=private or None, revision=revision)
            except UgeError as e:
                raise UgeError(f"{e} [the release itself is written to {output}: publish it with "
                               f"`uge-hf push {output} {push}{f' --revision {revision}' if revision else ''}`]") from None


def _print_summary(result: ProtectResult) -> None:
    """What `protect` wrote and measured (its result: the card's block and the folders), on stdout."""
    from rich.console import Console
    from rich.table import Table

    card = result.card
    results = card.results
    extra = results.method_results if results is not None else {}
    console = Console(soft_wrap=True)  # paths and hashes are copied from here: never wrap them
    console.print(f"release written to {result.release_dir} (method {card.method})")
    for net in card.authorized:
        console.print(f"authorized {net.spec}: init sha256 {net.init_sha256}")
    if result.private_dir is not None:
        console.print(f"[bold]private[/bold] key and authorized weights: {result.private_dir}"
                      " (keep it; never publish it)")
    table = Table(title="measured on the release")
    table.add_column("figure")
    table.add_column("value")
    for split, stats in (results.perturbation if results is not None else {}).items():
        table.add_row(f"{split}: max |diff| / bound (levels)", f"{stats.linf_levels:.0f} / {card.pixel_bound}")
        table.add_row(f"{split}: mean |diff| (levels), PSNR", f"{stats.mean_abs_levels}, {stats.psnr_db} dB")
    if "invariance" in extra:
        inv = extra["invariance"]
        table.add_row("invariance K(x_u) = K(T(x)): images over tolerance", f"{inv['images_over_tolerance']} of {inv['images_checked']}")
        table.add_row("mean signal (levels)", str(extra["mean_signal_levels"]))
    for net in extra.get("authorized", []):
        table.add_row(f"{net['spec']} clean train / protected train acc",
                      f"{net['clean_train_accuracy']} / {net['protected_train_accuracy']}")
        if net["clean_test_accuracy"] is not None:
            table.add_row(f"{net['spec']} clean test acc ({results.test_split})", str(net["clean_test_accuracy"]))
    if "feature_cosine" in extra:
        table.add_row("encoder feature cosine clean vs protected", str(extra["feature_cosine"]))
    for when, terms in extra.get("losses", {}).items():
        table.add_row(f"losses, {when.replace('_', ' ')}", ", ".join(f"{k} {v}" for k, v in terms.items()))
    console.print(table)


@app.command()
@_user_errors
def evaluate(
    release: Annotated[Path, typer.Argument(help="Release folder made by `uge-hf protect` (or a Hub dataset id)")],
    clean: Annotated[str, typer.Option(help="The clean dataset it was made from (folder or Hub id); its test split is used")],
    hacker: Annotated[Optional[list[str]], typer.Option(help="Hacker spec; repeat (default: CNN, LeNet, MobileNetV2, ShuffleNetV2, authorized arch with another seed)")] = None,
    distill: Annotated[bool, typer.Option(help="Run the Distill attack")] = True,
    attack: Annotated[Optional[list[str]], typer.Option(help="jpeg10, grayscale, augment or linear-projection (a linear classifier's directions projected out of train and test images); repeatable")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Override the card recipe's epochs")] = None,
    train_rows: Annotated[Optional[int], typer.Option(help="Use the first N training rows")] = None,
    test_rows: Annotated[Optional[int], typer.Option(help="Use the first N test rows")] = None,
    output: Annotated[Optional[Path], typer.Option(help="Where results.{json,md,png} go (default: RELEASE-eval)")] = None,
    cache_dir: Annotated[Optional[Path], typer.Option(help="Trained-network cache, shared across releases of the same data")] = None,
    update_card: Annotated[bool, typer.Option(help="Write the results into the release card")] = False,
    authorized_weights: Annotated[Optional[Path], typer.Option(help="Private authorized weights of a keyed release (model.safetensors or the OUTPUT.private folder)")] = None,
    peak_epoch: Annotated[bool, typer.Option(help="Also report each Normal-trained network's best test accuracy over its epochs")] = True,
) -> None:
    """Train networks on the clean and the protected data and compare their test accuracy (the paper's Table 1)."""
    from .evaluate import EvaluateConfig, evaluate as run_evaluate, markdown_table, update_card as write_card, write_results

    if update_card and not release.is_dir():
        raise UgeError("--update-card writes into a local release folder; evaluate a local copy to update its card")
    config = EvaluateConfig(hackers=hacker or None, distill=distill, attacks=attack or [], epochs=epochs,
                            train_rows=train_rows, test_rows=test_rows, peak_epoch=peak_epoch)
    rows = run_evaluate(release, clean, config, cache_dir=cache_dir, authorized_weights=authorized_weights)
    meta = {"release": str(release), "clean": clean, "config": {k: v for k, v in vars(config).items()}}
    folder = write_results(rows, output or release.parent / f"{release.name}-eval", meta)
    if update_card:
        write_card(release, rows, meta)
    typer.echo(markdown_table(rows))
    typer.echo(f"results written to {folder.resolve()}")


# --- Hub release (#4): push, verify ---------------------------------------------------------------------------


def _push_and_report(folder: Path, repo_id: str, **options) -> None:
    from .hub import push_release

    info = push_release(folder, repo_id, **options)
    typer.echo(f"published {folder} to {repo_id} in one commit: {info.commit_url}")


@app.command()
@_user_errors
def push(
    folder: Annotated[Path, typer.Argument(help="Release folder written by `uge-hf protect`")],
    repo_id: Annotated[str, typer.Argument(help="Hub dataset repo OWNER/NAME (created if missing)")],
    private: Annotated[bool, typer.Option(help="Create the repo private (an existing repo keeps its visibility)")] = False,
    revision: Annotated[Optional[str], typer.Option(help="Branch to commit to (created from main if missing)")] = None,
    message: Annotated[Optional[str], typer.Option(help="Commit message")] = None,
    token: Annotated[Optional[str], typer.Option(help="Hub token with write access (default: HF_TOKEN or `hf auth login`)")] = None,
    force: Annotated[bool, typer.Option(help="Replace a repo whose files are not a uge-hf release")] = False,
) -> None:
    """Verify FOLDER, then publish it byte for byte to the dataset repo REPO_ID as one commit."""
    _push_and_report(folder, repo_id, private=private or None, revision=revision, commit_message=message,
                     token=token, force=force)


@app.command()
@_user_errors
def verify(
    release: Annotated[str, typer.Argument(help="Release folder or Hub dataset id")],
    original: Annotated[Optional[str], typer.Option(help="The source dataset (folder or Hub id): also check the bound and the labels")] = None,
    revision: Annotated[Optional[str], typer.Option(help="Hub revision of RELEASE")] = None,
    authorized_weights: Annotated[Optional[Path], typer.Option(help="Private authorized weights (model.safetensors or the OUTPUT.private folder) to check against the card")] = None,
) -> None:
    """Check a release: card, authorized weights hashes, shards, images (and, with --original, bound and labels)."""
    from rich.console import Console
    from rich.markup import escape

    from .verify import verify_release

    checks = verify_release(release, original=original, revision=revision, authorized_weights=authorized_weights)
    console = Console(soft_wrap=True, highlight=False)
    for check in checks:
        mark = "[green]PASS[/green]" if check.ok else "[red]FAIL[/red]"
        console.print(f"{mark} {escape(check.name)}: {escape(check.detail)}")
    failed = [check for check in checks if not check.ok]
    if failed:
        typer.secho(f"{len(failed)} of {len(checks)} checks failed: {release} does not check out", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    console.print(f"[green]all {len(checks)} checks passed[/green]")


# --- end Hub release ------------------------------------------------------------------------------------------


# --- Demo (#5): the browser demo ------------------------------------------------------------------------------


@app.command()
@_user_errors
def demo(
    assets: Annotated[Optional[Path], typer.Option(help="Folder with generator/ and samples/ (default: the checkout's spaces/), or a release made with release_generator=True")] = None,
    host: Annotated[str, typer.Option(help="Address to serve on (0.0.0.0: reachable from other machines)")] = "127.0.0.1",
    port: Annotated[Optional[int], typer.Option(help="Port (default: gradio's, 7860 or the next free one)")] = None,
) -> None:
    """Serve the demo page (the Hugging Face Space in spaces/): protect an image, inspect a release. Needs gradio."""
    import os

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from .demo import launch

    launch(assets, server_name=host, server_port=port)


# --- end Demo -------------------------------------------------------------------------------------------------


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
