"""Measuring a release the way the paper does (Table 1): train networks from scratch, compare test accuracy.

Each network is trained with the card's recipe twice, once on the clean split and once on the protected one, and
tested on the clean test split:

- the authorized network(s), from the released initial weights;
- hacker networks (other architectures, and the authorized architecture with another seed): **Normal**;
- **Distill** (Eq. 10): a student trained by KL to the authorized network that was trained on the same data;
- **attacks** a hacker may apply before Normal training: JPEG quality 10, grayscale, crop+flip augmentation, and
  the linear-projection attack (`attacks.py`);
- optionally, networks the caller builds (`EvaluationData.extra_networks`, e.g. the authorized architecture behind
  another key's input stage: "Wrong key"), trained Normally.

With `peak_epoch`, Normal-trained networks (authorized, hackers, extra networks) also report the best test accuracy
over their epochs: what early stopping on that held-out data would get.

Every trained network is cached (`cache_dir`, keyed by what determines it: spec, data, recipe, teacher, input
stages), so a killed evaluation resumes without retraining what finished, and clean-data references are shared by
every release of the same data.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .card import AuthorizedEntry
from .attacks import grayscale, jpeg, linear_projection_stage
from .config import Recipe
from .data import TEST_SPLITS, ClassificationTensors, load_map_style, to_tensors
from .errors import UgeError
from .files import atomic_write, weights_tensors
from .authorized import KeyedNetwork, build_authorized, read_weights, weight_problems
from .layout import load_release
from .specs import ModelSpec, build_model
from .training import accuracy, train_classifier
from .progress import library_bars

PAPER_HACKER_ARCHS = ("cnn", "lenet", "mobilenetv2", "shufflenetv2")
ATTACKS = ("jpeg10", "grayscale", "augment", "linear-projection")


def default_hackers(authorized: str) -> list[str]:
    """The paper's hacker backbones, plus the authorized architecture (and width) with another init."""
    spec = ModelSpec.parse(authorized)
    same_arch = dataclasses.replace(spec, seed=spec.seed + 1)
    return [f"{arch}-seed{spec.seed + 1}" for arch in PAPER_HACKER_ARCHS if arch != spec.arch] + [str(same_arch)]


@dataclass
class EvaluateConfig:
    """What to train. Every network uses the release card's recipe unless `epochs` overrides its length."""

    hackers: list[str] | None = None  # hacker specs; None: default_hackers(first authorized spec)
    distill: bool = True  # run the Distill attack
    distill_students: list[str] | None = None  # students of the Distill attack; None: the first hacker
    attacks: list[str] = field(default_factory=list)  # any of ATTACKS, applied before Normal training
    attack_hackers: list[str] | None = None  # hackers that try the attacks; None: the first hacker
    epochs: int | None = None  # override the recipe's epochs (e.g. for a quick look); None: the card's
    train_rows: int | None = None  # use the first N rows of the protected split (None: all)
    test_rows: int | None = None  # use the first N rows of the test split (None: all)
    peak_epoch: bool = True  # Normal-trained networks also report their best per-epoch test accuracy
    wrong_key: bool = True  # keyed releases: also train the authorized backbone behind another key, and without one

    def __post_init__(self) -> None:
        unknown = sorted(set(self.attacks) - set(ATTACKS))
        if unknown:
            raise UgeError(f"unknown attack(s) {', '.join(unknown)}: choose from {', '.join(ATTACKS)}")
        for spec in [*(self.hackers or []), *(self.distill_students or []), *(self.attack_hackers or [])]:
            ModelSpec.parse(spec)
        if self.epochs is not None and self.epochs < 1:
            raise UgeError(f"epochs must be >= 1, got {self.epochs}")


@dataclass
class Row:
    """One line of the results table: a network, how it was trained, and its clean-test accuracy both ways."""

    network: str
    role: str  # "authorized" or "hacker"
    scheme: str  # "Normal", "Distill", an attack name, or an extra network's scheme (e.g. "Wrong key")
    clean: float  # test accuracy when trained on the clean split
    protected: float  # test accuracy when trained on the protected split
    # Best test accuracy after any epoch (EvaluateConfig.peak_epoch; Normal-trained rows only). Measured on the same
    # test rows as `clean`/`protected`, so it is what early stopping on those rows would get: an upper bound for a
    # hacker who holds out clean data (benchmarks pass a validation slice as the test rows). None: not recorded
    # (peak_epoch off, another scheme, or a network cached by a run that did not record its epochs).
    peak_clean: float | None = None
    peak_protected: float | None = None

    @property
    def change(self) -> float:
        return self.protected - self.clean


@dataclass
class EvaluationData:
    """Row-aligned clean and protected training images, the clean test split, and the recipe to train with."""

    clean: ClassificationTensors
    protected: ClassificationTensors
    test: ClassificationTensors
    recipe: Recipe
    authorized: list[AuthorizedEntry]  # the card's authorized entries
    release_dir: Path
    # Authorized spec -> its input stage (a keyed network's key stage), a fixed module on [0, 1] images applied before
    # augmentation in training and at test time, and to the teacher's inputs when that network is the Distill teacher.
    input_stages: dict[str, nn.Module] = field(default_factory=dict)
    # (scheme, spec, model factory, input stage or None): more networks trained Normally on clean and protected, each
    # reported as a hacker row named `scheme` (e.g. "Wrong key": the authorized architecture behind another key).
    extra_networks: list[tuple[str, str, Callable[[], nn.Module], nn.Module | None]] = field(default_factory=list)

    # Authorized spec -> its backbone with the checked initial weights (`uge_hf.authorized.weight_problems`).
    authorized_networks: dict[str, nn.Module] = field(default_factory=dict)
    # What the authorized party trains on from the release, when it is not the released images: a lock release's
    # images unlocked with the key (uint8 (N, C, H, W), row-aligned with `protected`).
    authorized_images: Tensor | None = None

    def __post_init__(self) -> None:
        unknown = sorted(set(self.input_stages) - {net.spec for net in self.authorized})
        if unknown:
            raise UgeError(f"input stages for {', '.join(unknown)}, which the card does not authorize")


def load_evaluation_data(release_dir: str | Path, clean_source, config: EvaluateConfig,
                         authorized_weights: str | os.PathLike | None = None,
                         key: str | os.PathLike | None = None) -> EvaluationData:
    """Read the release's protected split, the matching clean rows and test split of `clean_source`, and the authorized
    networks (public weights from the release; private ones from `authorized_weights`, a file or private folder), each
    checked against the card. A keyed release adds its key stage as the authorized network's input stage, and, with
    `config.wrong_key`, a "Wrong key" row (the same backbone behind another key's stage) and a "No key" row (the same
    backbone and init without the key stage: what the spec alone gives a hacker, and the plain clean reference).
    A lock release needs `key`: the authorized network trains on the unlocked images; "Wrong key" tries another
    key on every row (each must be refused) and then, like "No key", trains on the release as it is.
    """
    from .card import read_card
    from .fetch import fetch_release

    release_dir = fetch_release(release_dir)
    card = read_card(release_dir)
    split = card.protected_splits[0]
    image_column, label_column = card.image_column, card.label_column
    size = card.image_size
    names = card.class_names
    released = load_release(release_dir, [split])[split]
    clean_splits = load_map_style(clean_source)
    if split not in clean_splits:
        raise UgeError(f"the clean dataset has no split {split!r} (the release protects it)")
    test_name = next((name for name in TEST_SPLITS if name in clean_splits), None)
    if test_name is None:
        raise UgeError(f"the clean dataset has no test split (one of {', '.join(TEST_SPLITS)}) to measure accuracy on")
    clean_train = clean_splits[split]
    if clean_train.num_rows != released.num_rows:
        raise UgeError(f"the clean {split!r} split has {clean_train.num_rows} rows, the release {released.num_rows}")

    def tensors(ds, rows):
        ds = ds.select(range(min(rows, ds.num_rows))) if rows else ds
        return to_tensors(ds, image_column, label_column, size, names)

    clean = tensors(clean_train, config.train_rows)
    protected = tensors(released, config.train_rows)
    if not torch.equal(clean.labels, protected.labels):
        raise UgeError("the release's labels differ from the clean split's: is --clean the dataset it was made from?")
    recipe = card.recipe
    if config.epochs is not None:
        recipe = dataclasses.replace(recipe, epochs=config.epochs)
    test = tensors(clean_splits[test_name], config.test_rows)
    data = EvaluationData(clean, protected, test, recipe, card.authorized, release_dir)
    for net in card.authorized:
        content = read_weights(release_dir, net, authorized_weights)
        problems = weight_problems(net, content)
        if problems:
            raise UgeError("; ".join(problems))
        model = build_authorized(net, content)
        if isinstance(model, KeyedNetwork):
            data.input_stages[net.spec] = model.key_stage
            model = model.backbone
        data.authorized_networks[net.spec] = model
    if card.method == "lock":
        if key is None:
            raise UgeError("the authorized party of a lock release trains on the unlocked images: pass the key"
                           " (--key key.json or the OUTPUT.private folder)")
        from .unlocking import unlock

        data.authorized_images = tensors(unlock(release_dir, key)[split], config.train_rows).images
        if not torch.equal(data.authorized_images, clean.images):
            raise UgeError("the unlocked images are not the clean split's: is --clean the dataset the release was made from?")
        if config.wrong_key:
            _refuse_wrong_key(released, card, len(clean.labels))
            net = card.authorized[0]
            backbone = data.authorized_networks[net.spec]
            data.extra_networks += [("Wrong key", net.spec, lambda: copy.deepcopy(backbone), None),
                                    ("No key", net.spec, lambda: copy.deepcopy(backbone), None)]
    if card.method == "keyed" and config.wrong_key:
        net = card.authorized[0]
        backbone = data.authorized_networks[net.spec]
        wrong = wrong_key_stage(card.method_fields["key"], len(names))
        data.extra_networks += [("Wrong key", net.spec, lambda: copy.deepcopy(backbone), wrong),
                                ("No key", net.spec, lambda: copy.deepcopy(backbone), None)]
    return data


def _refuse_wrong_key(released, card, rows: int) -> None:
    """Another key's cipher on the first `rows` blobs of a lock release: UgeError if it opens any (it must open none:
    the Wrong key row then trains on the release as it is)."""
    from .lock import LockKey
    from .unlocking import RowUnlocker

    unlock_column = card.method_fields["lock"]["unlock_column"]
    wrong = RowUnlocker(LockKey(hashlib.sha256(b"uge-hf wrong key").digest()), card.image_column, card.label_column,
                        unlock_column, card.class_names)
    subset = released.select(range(min(rows, released.num_rows)))
    feature = subset.features[card.label_column]  # blobs are bound to class indices
    opened = 0
    for row, columns in enumerate(zip(subset[card.image_column], subset[card.label_column], subset[unlock_column])):
        try:
            wrong.unlock_images(*([value] for value in columns), lambda _, row=row: f"row {row}", feature)
            opened += 1
        except UgeError:
            pass
    if opened:
        raise UgeError(f"a wrong key opened {opened} of {subset.num_rows} rows of the lock release: it is broken")


def wrong_key_stage(settings: dict, num_classes: int) -> nn.Module:
    """A key stage with the card's key settings (`uge.key`) from another key: a fixed, public one, since the attacker
    knows the method and its settings, not the key."""
    from .key import KeyGeometry, SecretKey

    geometry = KeyGeometry(3, settings["tile"], settings["groups"], settings.get("grain", 1))
    secret = hashlib.sha256(f"uge-hf wrong key {geometry}".encode()).digest()
    return SecretKey(secret, geometry, num_classes).stage()


def stage_fingerprint(stage: nn.Module) -> str:
    """What identifies an input stage in a cache key: its `fingerprint` attribute (a string naming what determined
    it) if it has one, else its class, repr and state (parameters and buffers)."""
    given = getattr(stage, "fingerprint", None)
    if isinstance(given, str):
        return given
    digest = hashlib.sha256(f"{type(stage).__module__}.{type(stage).__qualname__}\n{stage!r}".encode())
    for name, tensor in stage.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


def _data_fingerprint(images: Tensor, labels: Tensor) -> str:
    digest = hashlib.sha256()
    for tensor in (images, labels):
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class Trainer:
    """Trains networks with a recipe and caches them on disk by everything that determines the result."""

    def __init__(self, cache_dir: str | Path, device: torch.device | str = "cpu"):
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.device = device
        self.trained_here: set[str] = set()
        self.loaded_from_cache = 0  # networks trained by an earlier run (a timing of this run then covers less)

    def train(self, model: nn.Module, label: str, images: Tensor, labels: Tensor, recipe: Recipe,
              teacher: tuple[nn.Module, str] | None = None, input_stage: nn.Module | None = None,
              teacher_stage: nn.Module | None = None, record_on: tuple[Tensor, Tensor] | None = None,
              ) -> tuple[nn.Module, str]:
        """Train `model` (or load it from the cache); returns it and its cache key (a teacher's identity).

        `input_stage` / `teacher_stage` are passed to `train_classifier` and are part of the key. With
        `record_on=(test_images, test_labels)`, a network trained here records its test accuracy (through
        `input_stage`) after every epoch, kept beside its weights; `epoch_accuracies` reads it back.
        """
        key = hashlib.sha256()
        for tensor in (*model.state_dict().values(), images, labels):
            key.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        key.update(json.dumps(dataclasses.asdict(recipe), sort_keys=True).encode())
        key.update((teacher[1] if teacher else "").encode())
        for role, stage in (("input_stage", input_stage), ("teacher_stage", teacher_stage)):
            if stage is not None:  # absent from the keys of networks without stages: older caches stay valid
                key.update(f"{role}:{stage_fingerprint(stage)}".encode())
        name = key.hexdigest()[:24]
        path = self.cache_dir / f"{name}.safetensors"
        if path.exists():
            model.load_state_dict(load_file(str(path)))
            self.loaded_from_cache += name not in self.trained_here
            return model.to(self.device), name
        curve: list[float] = []

        def record(epoch: int, model: nn.Module) -> None:
            curve.append(accuracy(model, *record_on, self.device, input_stage=input_stage))
            model.train()  # accuracy() switched it to eval mode; the next epoch trains

        train_classifier(model, images, labels, recipe, self.device, description=label,
                         on_epoch_end=record if record_on is not None else None,
                         teacher=teacher[0] if teacher else None, input_stage=input_stage, teacher_stage=teacher_stage)
        if record_on is not None:  # before the weights: weights on disk always come with their curve
            self._write_curve(name, _data_fingerprint(*record_on), curve)
        atomic_write(path, lambda partial: save_file(weights_tensors(model), str(partial)))
        self.trained_here.add(name)
        return model, name

    def epoch_accuracies(self, key: str, images: Tensor, labels: Tensor) -> list[float] | None:
        """Test accuracy on (`images`, `labels`) after each epoch of the network cached as `key`; None if the run
        that trained it did not record them on those rows."""
        path = self.cache_dir / f"{key}.epochs.json"
        if not path.exists():
            return None
        return json.loads(path.read_text()).get(_data_fingerprint(images, labels))

    def _write_curve(self, key: str, data: str, curve: list[float]) -> None:
        path = self.cache_dir / f"{key}.epochs.json"
        curves = json.loads(path.read_text()) if path.exists() else {}
        curves[data] = curve
        atomic_write(path, lambda partial: partial.write_text(json.dumps(curves) + "\n"))


@library_bars()
def evaluate(release_dir: str | os.PathLike, clean_source, config: EvaluateConfig | None = None,
             cache_dir: str | Path | None = None, device: torch.device | str | None = None,
             authorized_weights: str | os.PathLike | None = None, key: str | os.PathLike | None = None) -> list[Row]:
    """Train every network of `config` on the clean and the protected data; return the table's rows.

    `release_dir` is a release folder or Hub id. Trained networks are cached in `cache_dir` (default: beside a
    local release, else in the working directory). `authorized_weights`: private authorized weights (a keyed
    release's `model.safetensors` or `OUTPUT.private` folder), checked against the card. `key`: a lock release's key.
    """
    config = config or EvaluateConfig()
    data = load_evaluation_data(release_dir, clean_source, config, authorized_weights, key)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    name = Path(os.fspath(release_dir)).name
    default_cache = Path(release_dir).parent / f"{name}.eval-cache" if Path(release_dir).is_dir() else Path(f"{name}.eval-cache")
    trainer = Trainer(cache_dir or default_cache, device)
    return run_protocol(data, config, trainer)


class Trained(NamedTuple):
    """One trained network of the protocol: its final and best per-epoch test accuracy, the model, its cache key."""

    accuracy: float
    peak: float | None
    model: nn.Module
    key: str


def run_protocol(data: EvaluationData, config: EvaluateConfig, trainer: Trainer) -> list[Row]:
    """The table: authorized, hackers Normal, extra networks, Distill students, attacks; clean vs protected for each."""
    num_classes = len(data.clean.class_names)
    variants = {"clean": data.clean.images, "protected": data.protected.images}
    labels = data.clean.labels
    test = (data.test.images, data.test.labels)

    def measure(model_fn, label, images_of=variants, recipe=data.recipe, teacher_of=None, teacher_stage=None,
                stage_of=None, peak=False) -> dict[str, Trained]:
        """Train on each variant (through `stage_of[variant]`, if given) and test on the test rows alike."""
        record = peak and config.peak_epoch
        results = {}
        for variant, images in images_of.items():
            stage = stage_of[variant] if stage_of else None
            model, key = trainer.train(model_fn(), f"{label} on {variant}", images, labels, recipe,
                                       teacher_of[variant] if teacher_of else None, input_stage=stage,
                                       teacher_stage=teacher_stage, record_on=test if record else None)
            curve = trainer.epoch_accuracies(key, *test) if record else None
            final = accuracy(model, *test, trainer.device, input_stage=stage)
            results[variant] = Trained(final, max(curve) if curve else None, model, key)
        return results

    def row(network: str, role: str, scheme: str, results: dict[str, Trained]) -> Row:
        clean, protected = results["clean"], results["protected"]
        return Row(network, role, scheme, clean.accuracy, protected.accuracy, clean.peak, protected.peak)

    rows: list[Row] = []
    teachers = {}
    for net in data.authorized:
        checked = data.authorized_networks[net.spec]
        authorized_model = lambda checked=checked: copy.deepcopy(checked)
        stage = data.input_stages.get(net.spec)
        own = variants if data.authorized_images is None else {**variants, "protected": data.authorized_images}
        results = measure(authorized_model, f"authorized {net.spec}", own, stage_of=dict.fromkeys(variants, stage), peak=True)
        rows.append(row(net.spec, "authorized", "Normal", results))
        teachers.setdefault("first", ({v: (r.model, r.key) for v, r in results.items()}, stage))

    hackers = config.hackers or default_hackers(data.authorized[0].spec)
    for spec in hackers:
        results = measure(lambda spec=spec: build_model(spec, num_classes), f"hacker {spec}", peak=True)
        rows.append(row(spec, "hacker", "Normal", results))

    for scheme, spec, model_fn, stage in data.extra_networks:
        results = measure(model_fn, f"{scheme} {spec}", stage_of=dict.fromkeys(variants, stage), peak=True)
        rows.append(row(spec, "hacker", scheme, results))

    if config.distill:
        teacher_of, teacher_stage = teachers["first"]
        for spec in config.distill_students or hackers[:1]:
            results = measure(lambda spec=spec: build_model(spec, num_classes), f"distill {spec}",
                              teacher_of=teacher_of, teacher_stage=teacher_stage)
            rows.append(row(spec, "hacker", "Distill", results))

    for attack in config.attacks:
        recipe, attacked, stage_of = data.recipe, variants, None
        if attack == "augment":
            recipe = dataclasses.replace(data.recipe, augmentation="crop+flip")
        elif attack == "linear-projection":  # each variant's own linear classifier; the stage also sees test images
            stage_of = {v: linear_projection_stage(images, labels, num_classes) for v, images in variants.items()}
        else:
            transform = jpeg if attack == "jpeg10" else grayscale
            attacked = {variant: transform(images) for variant, images in variants.items()}
        for spec in config.attack_hackers or hackers[:1]:
            results = measure(lambda spec=spec: build_model(spec, num_classes), f"{attack} {spec}", attacked, recipe,
                              stage_of=stage_of)
            rows.append(row(spec, "hacker", attack, results))
    return rows


SCHEME_NAMES = {"Normal": "Normal", "Distill": "Distill", "jpeg10": "JPEG q10", "grayscale": "Grayscale",
                "augment": "Crop+flip", "linear-projection": "Linear proj."}


def scheme_name(scheme: str) -> str:
    """The results tables' name of a scheme (an extra network's scheme, e.g. "Wrong key", as given)."""
    return SCHEME_NAMES.get(scheme, scheme)


def markdown_table(rows: list[Row]) -> str:
    """Rows laid out like the paper's Table 1: network x scheme; clean, protected, change (accuracy %), and the
    best per-epoch accuracies when any row has them."""
    peaks = any(r.peak_clean is not None or r.peak_protected is not None for r in rows)
    header = "| network | role | scheme | clean | protected | change |" + (" peak clean | peak protected |" if peaks else "")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for row in rows:
        line = (f"| `{row.network}` | {row.role} | {scheme_name(row.scheme)} | {100 * row.clean:.1f} | "
                f"{100 * row.protected:.1f} | {100 * row.change:+.1f} |")
        if peaks:
            line += "".join(" - |" if v is None else f" {100 * v:.1f} |" for v in (row.peak_clean, row.peak_protected))
        lines.append(line)
    return "\n".join(lines)


def bar_chart(rows: list[Row], path: str | Path, title: str = "") -> None:
    """Clean vs protected accuracy per row, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r.network}\n{scheme_name(r.scheme)}" for r in rows]
    positions = range(len(rows))
    figure, axes = plt.subplots(figsize=(max(6, 1.3 * len(rows)), 4))
    axes.bar([p - 0.2 for p in positions], [100 * r.clean for r in rows], width=0.4, label="trained on clean")
    axes.bar([p + 0.2 for p in positions], [100 * r.protected for r in rows], width=0.4, label="trained on protected")
    axes.set_xticks(list(positions), labels, fontsize=7)
    axes.set_ylabel("clean test accuracy (%)")
    axes.set_title(title)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_results(rows: list[Row], output_dir: str | Path, meta: dict) -> Path:
    """results.json, results.md and results.png in `output_dir`."""
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    payload = {**meta, "rows": [{**dataclasses.asdict(r), "change": r.change} for r in rows]}
    (output / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
    (output / "results.md").write_text(markdown_table(rows) + "\n")
    bar_chart(rows, output / "results.png", title=str(meta.get("release", "")))
    return output


EVALUATION_MARKER = "<!-- uge-hf evaluation -->"


def update_card(release_dir: str | Path, rows: list[Row], meta: dict) -> None:
    """Write the results into the release card: `uge.evaluation` in the YAML and a table in the prose."""
    from .card import CARD_FILE, UgeBlock, load_card
    from .files import portable

    card = load_card(release_dir)
    block = UgeBlock.from_dict(card.data.to_dict().get("uge"))
    evaluation = {**portable(meta), "rows": [{**dataclasses.asdict(r), "change": round(r.change, 4)} for r in rows]}
    card.data.uge = dataclasses.replace(block, evaluation=evaluation).to_dict()
    path = Path(release_dir) / CARD_FILE
    section = (f"{EVALUATION_MARKER}\n## Evaluation (`uge-hf evaluate`)\n\nClean-test accuracy (%) of networks "
               f"trained on the clean and on the protected data with the card's recipe.\n\n{markdown_table(rows)}\n")
    text = card.text.split(EVALUATION_MARKER)[0].rstrip() + "\n\n" + section
    card.text = text
    card.save(str(path))
