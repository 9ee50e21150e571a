"""The release's dataset card: its `uge:` YAML block as one typed object, `UgeBlock`, and the prose from `cards/`.

    pipeline.protect --UgeBlock--> release.write_release --UgeBlock.to_dict()--> README.md
    README.md --read_card()--> UgeBlock (checked once, here) --> verify, authorized, evaluate, hub, demo, cli

`UgeBlock.to_dict` writes the YAML key order of schema 2 exactly (a release's bytes do not depend on this module's
version), and `UgeBlock.from_dict` is the only place a card is checked: every reader gets a valid block or a
one-line UgeError naming the field (`README.md: uge.FIELD ...`).

What is generic lives in typed fields. What one method adds (the keyed method's `key:` settings, the paper's
`encoder:` and `loss_weights:`, a future method's own block) travels in `UgeBlock.method_fields` and
`Results.method_results`, mappings in the order the method gave them: a new method needs no edit here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import Recipe
from .errors import UgeError

if TYPE_CHECKING:
    from datasets import DatasetInfo
    from huggingface_hub import DatasetCard

    from .specs import ModelSpec

CARD_SCHEMA_VERSION = 2  # 2: `method`, private authorized weights (`weights: null`, `private: true`)
READABLE_SCHEMA_VERSIONS = (1, 2)  # a version-1 card is a gradient-matching release with public weights
TEMPLATE = "uge_dataset_card.md"
CARD_FILE = "README.md"


def _wrong(field_name: str, why: str) -> UgeError:
    return UgeError(f"{CARD_FILE}: uge.{field_name} {why}")


def _typed(data: Mapping, key: str, kind, where: str, optional: bool = False):
    """`data[key]` if it is a `kind` (None too when `optional`), else a UgeError naming `where.key`."""
    value = data.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, kind):
        name = getattr(kind, "__name__", "number")
        raise _wrong(f"{where}{key}", f"is missing or not a {name}")
    return value


@dataclass(frozen=True)
class AuthorizedEntry:
    """One authorized network as the card declares it (`uge.authorized[i]`).

    The sha256 is of the whole initial-weights safetensors file: the backbone's (public weights, private secret
    init) or key stage + backbone (`input_stage: key`).
    """

    spec: str  # ARCH[-wWIDTH]-seedN as declared; with a secret init (seed None) it names the architecture only
    arch: str
    width: int  # the width actually built (the spec's, or the architecture's default)
    seed: int | None  # init seed; None: a secret init (private weights, the paper's method)
    num_classes: int
    init_sha256: str  # hex sha256 of the initial weights file
    weights: str | None = None  # release-relative path of public weights; None: private (OUTPUT.private/ only)
    private: bool = False  # the weights are not in the release; the publisher hands them out
    # "key": the weights hold `key_stage.*` (applied first) and `backbone.*`; "unlock": a lock release, whose images
    # are unlocked first and whose network's init is public (rebuilt from the spec)
    input_stage: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)  # fields a newer method declares, kept as read

    @classmethod
    def from_spec(cls, spec: str | ModelSpec, num_classes: int, init_sha256: str, *, secret_seed: bool = False,
                  **fields) -> AuthorizedEntry:
        """The entry of `spec` (parsed here, once): arch, width and seed taken from it (no seed when `secret_seed`)."""
        from .specs import ModelSpec

        parsed = spec if isinstance(spec, ModelSpec) else ModelSpec.parse(spec)
        return cls(str(parsed) if not isinstance(spec, str) else spec, parsed.arch, parsed.resolved_width,
                   None if secret_seed else parsed.seed, num_classes, init_sha256, **fields)

    def to_dict(self) -> dict:
        """The YAML mapping: `private` only when true, `input_stage` only when set (schema 2's exact keys)."""
        data = {"spec": self.spec, "arch": self.arch, "width": self.width, "seed": self.seed,
                "num_classes": self.num_classes, "init_sha256": self.init_sha256, "weights": self.weights}
        if self.private:
            data["private"] = True
        if self.input_stage is not None:
            data["input_stage"] = self.input_stage
        return {**data, **self.extra}

    @classmethod
    def from_dict(cls, data: Any, index: int, num_classes: int | None = None) -> AuthorizedEntry:
        """Parse and check `uge.authorized[index]`: types, the spec's grammar, arch/width/seed against the spec."""
        from .specs import ModelSpec

        where = f"authorized[{index}]."
        if not isinstance(data, Mapping):
            raise _wrong(f"authorized[{index}]", "is not a mapping")
        private = data.get("private") is True
        values = {key: _typed(data, key, kind, where, optional=key == "seed" and private)
                  for key, kind in (("spec", str), ("arch", str), ("width", int), ("seed", int),
                                    ("num_classes", int), ("init_sha256", str))}
        weights = data.get("weights")
        # a lock release's network has a public init rebuilt from its spec: the key authorizes, not the weights
        if not (isinstance(weights, str) or private or data.get("input_stage") == "unlock"):
            raise _wrong(f"authorized[{index}]", "names no weights file and is not marked private")
        try:
            spec = ModelSpec.parse(values["spec"])
        except UgeError as e:
            raise _wrong(f"{where}spec", f"is invalid: {e}") from None
        declared = (values["arch"], values["width"], values["seed"])
        if declared != (spec.arch, spec.resolved_width, spec.seed if values["seed"] is not None else None):
            raise _wrong(f"authorized[{index}]", f"arch/width/seed {declared} do not match its spec {values['spec']}")
        if num_classes is not None and values["num_classes"] != num_classes:
            raise _wrong(f"{where}num_classes", f"is {values['num_classes']} but there are {num_classes} class names")
        input_stage = data.get("input_stage")
        if input_stage is not None and not isinstance(input_stage, str):
            raise _wrong(f"{where}input_stage", f"is {input_stage!r}, not a name")
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**values, weights=weights if isinstance(weights, str) else None, private=private,
                   input_stage=input_stage, extra={k: v for k, v in data.items() if k not in known})


@dataclass(frozen=True)
class InputTransform:
    """How a network sees the images (`uge.input`): resized to `image_size`, then (x / 255 - mean) / std."""

    image_size: tuple[int, int]  # (height, width) in pixels
    mean: float
    std: float

    def to_dict(self) -> dict:
        return {"image_size": list(self.image_size), "mean": self.mean, "std": self.std}

    @classmethod
    def from_dict(cls, data: Any) -> InputTransform:
        if not isinstance(data, Mapping):
            raise _wrong("input", "is missing or not a dict")
        size = data.get("image_size")
        if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
            raise _wrong("input.image_size", f"is {size!r}, not [height, width]")
        return cls(tuple(size), data.get("mean"), data.get("std"))


@dataclass(frozen=True)
class PerturbationStats:
    """How far a protected split is from its source (`apply.perturbation_stats`), in 8-bit levels and dB."""

    linf_levels: float  # largest |x_u - x| over every pixel and channel
    mean_abs_levels: float  # mean |x_u - x|
    psnr_db: float  # PSNR of x_u against x (inf when identical)

    @classmethod
    def from_dict(cls, data: Any, split: str) -> PerturbationStats:
        where = f"results.perturbation.{split}."
        if not isinstance(data, Mapping):
            raise _wrong(where.rstrip("."), "is not a mapping")
        return cls(*(_typed(data, key, (int, float), where) for key in ("linf_levels", "mean_abs_levels", "psnr_db")))


@dataclass(frozen=True)
class Results:
    """`uge.results`: what `protect()` measured on the release (not the hacker evaluation, `uge-hf evaluate`)."""

    perturbation: Mapping[str, PerturbationStats]  # protected split (the first) -> its distance to the source
    test_split: str | None  # the held-out split the method's accuracies refer to; None: none was kept
    # The method's own measurements (`MethodResult.results`), in its order. gradient-matching: `authorized` (accuracy
    # of each authorized network's trajectory end), `feature_cosine`, `losses`; keyed: `invariance`,
    # `mean_signal_levels`.
    method_results: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"perturbation": {split: dataclasses.asdict(stats) for split, stats in self.perturbation.items()},
                "test_split": self.test_split, **self.method_results}

    @classmethod
    def from_dict(cls, data: Any) -> Results:
        if not isinstance(data, Mapping):
            raise _wrong("results", "is not a mapping")
        perturbation = data.get("perturbation") or {}
        if not isinstance(perturbation, Mapping):
            raise _wrong("results.perturbation", "is not a mapping")
        test_split = data.get("test_split")
        if test_split is not None and not isinstance(test_split, str):
            raise _wrong("results.test_split", f"is {test_split!r}, not a split name")
        return cls({split: PerturbationStats.from_dict(stats, split) for split, stats in perturbation.items()},
                   test_split, {k: v for k, v in data.items() if k not in ("perturbation", "test_split")})


# A method's own block and the fields its readers use (the keyed wrong-key stage, unlocking): checked on read.
METHOD_BLOCKS = {
    "keyed": ("key", {"tile": int, "groups": int}),
    "lock": ("lock", {"poison": str, "unlock_column": str, "key_sha256": str}),
}


@dataclass(frozen=True)
class UgeBlock:
    """The card's `uge:` block: what was declared, how the release was made, and what was measured.

    Build one with the constructor (the pipeline does, once per release); read one with `read_card(folder)`.
    Equal blocks write equal YAML, and `UgeBlock.from_dict(block.to_dict()) == block`.
    """

    uge_hf_version: str | None  # the uge-hf that wrote the release
    method: str  # the `uge_hf.methods` name: "keyed", "gradient-matching", ...
    authorized: list[AuthorizedEntry]  # at least one
    recipe: Recipe  # the authorized training recipe (the trajectory's, for gradient-matching)
    input: InputTransform
    rho: float  # L-inf bound on [0, 1] pixels, as configured
    pixel_bound: int  # the bound in 8-bit levels every released pixel obeys: floor(rho * 255)
    seed: int | None
    protected_splits: list[str]  # at least one; the first is the one the method was fitted on
    columns: Mapping[str, str]  # {"image": NAME, "label": NAME}
    class_names: list[str]  # index = class index
    results: Results | None
    config: Mapping[str, Any] | None  # `ProtectConfig.public_dict()` of the run (a mapping: older cards, other fields)
    # The method's own settings (`MethodResult.card`), written between `pixel_bound` and `seed` in its order.
    # keyed: `key` (tile, groups, grain, signs, amplitude/pull levels, dimensions, stage_is_public);
    # gradient-matching: `encoder`, `loss_weights`, `generator_released`.
    method_fields: Mapping[str, Any] = field(default_factory=dict)
    evaluation: Mapping[str, Any] | None = None  # written by `uge-hf evaluate --update-card`; None: not evaluated
    schema_version: int = CARD_SCHEMA_VERSION

    @property
    def image_column(self) -> str:
        return self.columns["image"]

    @property
    def label_column(self) -> str:
        return self.columns["label"]

    @property
    def image_size(self) -> tuple[int, int]:
        return self.input.image_size

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def has_private_weights(self) -> bool:
        return any(net.private for net in self.authorized)

    def authorized_entry(self, index: int) -> AuthorizedEntry:
        """`authorized[index]`, or a UgeError listing the declared ones."""
        if not isinstance(index, int) or not 0 <= index < len(self.authorized):
            listed = ", ".join(f"{i}: {n.spec}" for i, n in enumerate(self.authorized)) or "none"
            raise UgeError(f"no authorized network {index} in the card (it declares {listed})")
        return self.authorized[index]

    def to_dict(self) -> dict:
        """The YAML mapping, in schema 2's key order (method fields between `pixel_bound` and `seed`)."""
        data = {
            "schema_version": self.schema_version,
            "uge_hf_version": self.uge_hf_version,
            "method": self.method,
            "authorized": [net.to_dict() for net in self.authorized],
            "recipe": dataclasses.asdict(self.recipe),
            "input": self.input.to_dict(),
            "rho": self.rho,
            "pixel_bound": self.pixel_bound,
            **self.method_fields,
            "seed": self.seed,
            "protected_splits": list(self.protected_splits),
            "columns": dict(self.columns),
            "class_names": list(self.class_names),
        }
        if self.results is not None:
            data["results"] = self.results.to_dict()
        if self.config is not None:
            data["config"] = dict(self.config)
        if self.evaluation is not None:
            data["evaluation"] = dict(self.evaluation)
        return data

    @classmethod
    def from_dict(cls, data: Any) -> UgeBlock:
        """Parse and check a `uge:` mapping; a UgeError names the first wrong field (`README.md: uge.FIELD ...`)."""
        if not isinstance(data, Mapping):
            raise UgeError("the card has no 'uge:' block: not a uge-hf release")
        version = data.get("schema_version")
        if version not in READABLE_SCHEMA_VERSIONS:
            raise UgeError(f"the card has uge schema version {version!r}; "
                           f"this uge-hf reads versions {', '.join(map(str, READABLE_SCHEMA_VERSIONS))}")
        for key, kind in (("authorized", list), ("recipe", dict), ("input", dict), ("protected_splits", list),
                          ("columns", dict), ("class_names", list), ("pixel_bound", int), ("rho", (int, float))):
            _typed(data, key, kind, "")
        if not data["authorized"]:
            raise _wrong("authorized", "is empty")
        class_names = list(data["class_names"])
        authorized = [AuthorizedEntry.from_dict(net, i, len(class_names)) for i, net in enumerate(data["authorized"])]
        try:
            recipe = Recipe(**data["recipe"])
        except (TypeError, UgeError) as e:
            raise _wrong("recipe", f"is not a valid recipe: {e}") from None
        columns = data["columns"]
        if not all(isinstance(columns.get(key), str) for key in ("image", "label")):
            raise _wrong("columns", f"is {columns!r}, not {{image: NAME, label: NAME}}")
        if not data["protected_splits"]:
            raise _wrong("protected_splits", "is empty")
        block, fields = METHOD_BLOCKS.get(data.get("method"), (None, {}))
        if block is not None:
            _typed(data, block, Mapping, "")
            for key, kind in fields.items():
                _typed(data[block], key, kind, f"{block}.")
        results = data.get("results")
        config = data.get("config")
        if config is not None and not isinstance(config, Mapping):
            raise _wrong("config", "is not a mapping")
        evaluation = data.get("evaluation")
        typed = {f.name for f in dataclasses.fields(cls)} - {"method_fields"}
        return cls(
            uge_hf_version=data.get("uge_hf_version"),
            method=data.get("method", "gradient-matching"),  # schema 1 had one method
            authorized=authorized,
            recipe=recipe,
            input=InputTransform.from_dict(data["input"]),
            rho=data["rho"],
            pixel_bound=data["pixel_bound"],
            seed=data.get("seed"),
            protected_splits=list(data["protected_splits"]),
            columns=dict(columns),
            class_names=class_names,
            results=Results.from_dict(results) if results is not None else None,
            config=dict(config) if config is not None else None,
            method_fields={k: v for k, v in data.items() if k not in typed},
            evaluation=dict(evaluation) if isinstance(evaluation, Mapping) else None,
            schema_version=version,
        )


def load_card(release_dir: str | Path) -> DatasetCard:
    """The release folder's `README.md` as a `DatasetCard`; UgeError if there is none or its YAML does not parse."""
    from huggingface_hub import DatasetCard

    path = Path(release_dir) / CARD_FILE
    if not path.is_file():
        raise UgeError(f"{release_dir} has no {CARD_FILE}: not a uge-hf release")
    try:
        return DatasetCard.load(path)
    except Exception as e:  # a card whose YAML does not parse: untrusted text, any parser error is the user's
        raise UgeError(f"{CARD_FILE}: the card's YAML cannot be read ({type(e).__name__}: {e})") from None


def read_card(release_dir: str | Path) -> UgeBlock:
    """The `uge:` block of a release folder's card, parsed and checked (`UgeBlock.from_dict`); UgeError if not valid."""
    data = load_card(release_dir).data.to_dict().get("uge")
    if data is None:
        raise UgeError(f"the card {Path(release_dir) / CARD_FILE} has no 'uge:' block: not a uge-hf release")
    return UgeBlock.from_dict(data)


def read_uge_block(release_dir: str | Path) -> dict:
    """The checked `uge:` block as a plain mapping (`read_card(...).to_dict()`), for scripts that dump it as JSON.

    Library code reads `read_card` and the block's attributes.
    """
    return read_card(release_dir).to_dict()


# The Hub's `size_categories` buckets (upper bounds, exclusive), as its dataset card metadata spec lists them.
SIZE_CATEGORIES = ((10**3, "n<1K"), (10**4, "1K<n<10K"), (10**5, "10K<n<100K"), (10**6, "100K<n<1M"),
                   (10**7, "1M<n<10M"), (10**8, "10M<n<100M"), (10**9, "100M<n<1B"), (10**10, "1B<n<10B"),
                   (10**11, "10B<n<100B"), (10**12, "100B<n<1T"))
PAPER_URL = "https://arxiv.org/abs/2404.14016"  # an arXiv link in the card makes the Hub tag the paper


def size_category(rows: int) -> str:
    """The Hub's `size_categories` bucket of a dataset of `rows` rows (all splits): "n<1K", "1K<n<10K", ..., "n>1T"."""
    return next((name for bound, name in SIZE_CATEGORIES if rows < bound), "n>1T")


def render_card(uge: Mapping, dataset_info: DatasetInfo, source: str, *, license: str | list[str] | None = None,
                hub_id: str | None = None) -> DatasetCard:
    """The card for a release whose `uge:` block is `uge` (`UgeBlock.to_dict()`, paths made portable) and whose
    parquet shards `dataset_info` describes.

    `source` names the source in the prose and `pretty_name` (a Hub id or a folder's name, never a path); `license`
    is the source's (kept: protecting a dataset does not relicense it; None: no `license:` line), `hub_id` the Hub
    id it was loaded from (`source_datasets`, and a link). `size_categories` is the Hub's bucket of all rows.

    The `dataset_info` YAML (features, rows and bytes per split, as `push_to_hub` writes it) also makes the
    `datasets` cache key of the folder depend on its content: without it, two local releases in folders of the
    same name share one cache entry and `load_dataset` can return the older one.
    """
    from datasets.info import DatasetInfosDict
    from huggingface_hub import DatasetCard, DatasetCardData

    splits = list(dataset_info.splits)
    rows = sum(split.num_examples for split in dataset_info.splits.values())
    metadata = {"license": license} if license else {}
    if hub_id is not None:
        metadata["source_datasets"] = [hub_id]
    card_data = DatasetCardData(
        pretty_name=f"{source} (ungeneralizable)",
        task_categories=["image-classification"],
        size_categories=[size_category(rows)],
        tags=["uge", "ungeneralizable-examples", "uge-hf"],
        **metadata,
        configs=[
            {
                "config_name": "default",
                "data_files": [{"split": split, "path": f"data/{split}-*"} for split in splits],
            }
        ],
        uge=dict(uge),
    )
    DatasetInfosDict({"default": dataset_info}).to_dataset_card_data(card_data)
    template = files("uge_hf").joinpath("cards", TEMPLATE).read_text(encoding="utf-8")
    return DatasetCard.from_template(
        card_data, template_str=template, pretty_name=card_data.pretty_name, source=source, uge=uge,
        source_url=f"https://huggingface.co/datasets/{hub_id}" if hub_id is not None else None, paper_url=PAPER_URL,
    )
