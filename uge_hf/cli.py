"""The `uge-hf` command line: parse, call the library, print. A user mistake is one line on stderr, exit code 1."""

from __future__ import annotations

import dataclasses
import enum
import functools
import inspect
import json
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

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
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bars at all (uge-hf's, datasets' and"
                                              " huggingface_hub's); the same as UGE_HF_NO_PROGRESS=1")] = False,
) -> None:
    """Ungeneralizable examples for Hugging Face datasets: protect, evaluate, verify, push, demo."""
    if no_progress:
        import os

        from .progress import NO_PROGRESS_ENV

        # the environment, not a global: the library reads it at each call, and processes this one starts inherit it
        os.environ[NO_PROGRESS_ENV] = "1"


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


def _protect_config() -> type:
    from .config import ProtectConfig  # light: the config module imports no heavy library

    return ProtectConfig


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


# --- the protect command's config options, generated from ProtectConfig's fields --------------------------------

_PANELS = {(): "Protection config (ProtectConfig)", ("recipe",): "Authorized recipe (recipe.*)",
           ("keyed",): "Keyed method (keyed.*)"}


@dataclass(frozen=True)
class ConfigOption:
    """One command-line option for one (possibly nested) config field, e.g. `recipe.lr` -> `--recipe-lr`."""

    path: tuple[str, ...]  # field names from the config down to the leaf: ("recipe", "lr")
    param: str  # the Python parameter typer passes it as: "recipe_lr"
    flags: tuple[str, ...]  # "--recipe-lr" (and names kept for compatibility, e.g. "--trajectory-epochs")
    kind: type  # int, float, str or bool
    multiple: bool  # a list field: the option is repeated
    default: Any  # the field's default (shown in --help; the option itself defaults to "not given")
    help: str
    choices: tuple[str, ...] | None
    panel: str  # the --help section

    def parameter(self) -> inspect.Parameter:
        """The typer parameter: default None, so that an option not given leaves --config / --set in force.

        A field with choices becomes an Enum of them (typer shows and checks them as a click.Choice).
        """
        flags = self.flags if self.kind is not bool else (f"{self.flags[0]}/--no-{self.flags[0][2:]}", *self.flags[1:])
        shown = ", ".join(map(str, self.default)) if self.multiple else str(self.default)
        info = typer.Option(*flags, help=self.help, show_default=shown, rich_help_panel=self.panel)
        kind = enum.Enum(self.param, {value: value for value in self.choices}, type=str) if self.choices else self.kind
        kind = list[kind] if self.multiple else kind
        return inspect.Parameter(self.param, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None,
                                 annotation=Annotated[Optional[kind], info])


def config_options(cls: type, prefix: tuple[str, ...] = ()) -> list[ConfigOption]:
    """An option per leaf field of the config dataclass `cls`, nested settings (`recipe`, `keyed`) flattened.

    Type, default, help and choices come from the field (`config.knob` metadata), so a new field is a new option.
    """
    hints = typing.get_type_hints(cls)
    options = []
    for f in dataclasses.fields(cls):
        hint, path = hints[f.name], (*prefix, f.name)
        if dataclasses.is_dataclass(hint):
            options += config_options(hint, path)
            continue
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        multiple = typing.get_origin(hint) is list
        kind = args[0] if (multiple or args) else hint
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        flags = f.metadata.get("flags") or ("--" + "-".join(path).replace("_", "-"),)
        options.append(ConfigOption(path, "_".join(path), tuple(flags), kind, multiple, default,
                                    f.metadata.get("help", ""), f.metadata.get("choices"), _PANELS.get(prefix, "Settings")))
    return options


def with_config_options(cls: type):
    """Give the decorated command (whose last parameter is `**fields`) an option per field of `cls`, after its
    arguments; `fields` then holds them by `ConfigOption.param` (None where not given)."""

    def decorate(command):
        signature = inspect.signature(command, eval_str=True)
        own = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        arguments = [p for p in own if p.default is inspect.Parameter.empty]
        generated = [option.parameter() for option in config_options(cls)]
        parameters = [*arguments, *generated, *(p for p in own if p not in arguments)]
        command.__signature__ = signature.replace(parameters=parameters)
        command.__annotations__ = {p.name: p.annotation for p in parameters}
        command.config_options = config_options(cls)
        return command

    return decorate


def _set_options(values: dict, options: list[ConfigOption], given: dict) -> None:
    """Write the options the user gave into the config mapping `values` (nested fields into their settings)."""
    for option in options:
        value = given.get(option.param)
        if value is None or (option.multiple and not value):
            continue
        target = values
        for name in option.path[:-1]:
            target = target.setdefault(name, {})
        plain = [v.value if isinstance(v, enum.Enum) else v for v in (value if option.multiple else [value])]
        target[option.path[-1]] = plain if option.multiple else plain[0]


def _release_panel(text: str, *flags: str):
    return typer.Option(*flags, help=text, rich_help_panel="Release")


@app.command()
@with_config_options(_protect_config())
@_user_errors
def protect(
    dataset: Annotated[str, typer.Argument(help="Local dataset folder or Hub id (e.g. cifar10)")],
    output: Annotated[Optional[Path], _release_panel("Release folder (default: ./NAME-uge)")] = None,
    overwrite: Annotated[bool, _release_panel("Replace a non-empty output folder")] = False,
    streaming: Annotated[bool, _release_panel("Read DATASET as a stream (load_dataset(..., streaming=True)), shard by"
                                              " shard: needs --shard-rows and --method keyed or lock; rows are checked"
                                              " as they are read; same bytes as without")] = False,
    config: Annotated[Optional[Path], _release_panel("A ProtectConfig JSON (e.g. a release's uge_config.json)")] = None,
    set_: Annotated[Optional[list[str]], _release_panel("Any config field as KEY=VALUE (JSON values): --set lambda_fd=2"
                                                        " --set recipe.lr=0.1", "--set")] = None,
    push: Annotated[Optional[str], _release_panel("Hub dataset repo OWNER/NAME to publish the release to (one commit)")] = None,
    private: Annotated[bool, _release_panel("With --push: create the repo private")] = False,
    revision: Annotated[Optional[str], _release_panel("With --push: the branch to commit to (created if missing)")] = None,
    **fields,
) -> None:
    """Protect DATASET so that only the authorized network(s) learn well from it; write a release folder.

    Precedence, lowest first: the config's defaults, --config, --set, the options.
    """
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
        try:
            values.update(json.loads(config.read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError, ValueError) as e:
            raise UgeError(f"the config file {config} is not a JSON mapping of ProtectConfig fields ({e})") from None
    for name, value in _parse_settings(set_ or []).items():  # nested settings (recipe.lr, keyed.tile) merge
        values[name] = {**values[name], **value} if isinstance(values.get(name), dict) and isinstance(value, dict) else value
    _set_options(values, protect.config_options, fields)
    output = output or Path(f"{Path(dataset).name}-uge")
    result = run_protect(dataset, output_dir=output, config=ProtectConfig.from_dict(values), overwrite=overwrite,
                         streaming=streaming)
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
    if "unlock" in extra:
        unlock = extra["unlock"]
        table.add_row("rows that unlock to their source exactly", f"{unlock['rows_exact']} of {unlock['rows_checked']}")
        table.add_row("unlock data per row (bytes; x PNG size)", f"{unlock['bytes_per_row']} ({unlock['ratio_to_png']}x)")
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
    key: Annotated[Optional[Path], typer.Option(help="A lock release's key (key.json or the OUTPUT.private folder): the authorized row trains on the unlocked images")] = None,
    peak_epoch: Annotated[bool, typer.Option(help="Also report each Normal-trained network's best test accuracy over its epochs")] = True,
) -> None:
    """Train networks on the clean and the protected data and compare their test accuracy (the paper's Table 1)."""
    from .evaluate import EvaluateConfig, evaluate as run_evaluate, markdown_table, update_card as write_card, write_results

    if update_card and not release.is_dir():
        raise UgeError("--update-card writes into a local release folder; evaluate a local copy to update its card")
    config = EvaluateConfig(hackers=hacker or None, distill=distill, attacks=attack or [], epochs=epochs,
                            train_rows=train_rows, test_rows=test_rows, peak_epoch=peak_epoch)
    rows = run_evaluate(release, clean, config, cache_dir=cache_dir, authorized_weights=authorized_weights, key=key)
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
    if info.pr_url is not None:  # a release of many files: several commits, merged onto main in one step
        typer.echo(f"published {folder} to {repo_id} through pull request #{info.pr_num}, merged: {info.pr_url}")
    else:
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
    """Verify FOLDER, then publish it byte for byte to the dataset repo REPO_ID as one commit (over 100 files: a
    pull request of several commits, merged onto main in one step)."""
    _push_and_report(folder, repo_id, private=private or None, revision=revision, commit_message=message,
                     token=token, force=force)


@app.command()
@_user_errors
def verify(
    release: Annotated[str, typer.Argument(help="Release folder or Hub dataset id")],
    original: Annotated[Optional[str], typer.Option(help="The source dataset (folder or Hub id): also check the bound and the labels")] = None,
    revision: Annotated[Optional[str], typer.Option(help="Hub revision of RELEASE")] = None,
    authorized_weights: Annotated[Optional[Path], typer.Option(help="Private authorized weights (model.safetensors or the OUTPUT.private folder) to check against the card")] = None,
    key: Annotated[Optional[Path], typer.Option(help="A lock release's key (key.json or the OUTPUT.private folder): check that every protected row unlocks (with --original: to the source, bit for bit)")] = None,
) -> None:
    """Check a release: card, authorized weights hashes, shards, images (and, with --original, bound and labels)."""
    from rich.console import Console
    from rich.markup import escape

    from .verify import verify_release

    checks = verify_release(release, original=original, revision=revision, authorized_weights=authorized_weights, key=key)
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


@app.command()
@_user_errors
def unlock(
    release: Annotated[str, typer.Argument(help="A lock release: folder or Hub dataset id")],
    key: Annotated[Path, typer.Option(help="The publisher's key.json (or the OUTPUT.private folder holding it)")],
    output: Annotated[Path, typer.Option(help="Folder to write the unlocked dataset to (parquet shards for datasets.load_dataset)")],
    revision: Annotated[Optional[str], typer.Option(help="Hub revision of RELEASE")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty output folder")] = False,
) -> None:
    """Recover the exact source images of a lock release with its key; write them as a dataset folder."""
    from .unlocking import write_unlocked

    folder = write_unlocked(release, key, output, revision=revision, overwrite=overwrite)
    typer.echo(f"unlocked dataset written to {folder} (datasets.load_dataset reads it)")


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
