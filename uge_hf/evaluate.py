"""Measuring a release the way the paper does (Table 1): train networks from scratch, compare test accuracy.

Each network is trained with the card's recipe twice, once on the clean split and once on the protected one, and
tested on the clean test split:

- the authorized network(s), from the released initial weights;
- hacker networks (other architectures, and the authorized architecture with another seed): **Normal**;
- **Distill** (Eq. 10): a student trained by KL to the authorized network that was trained on the same data;
- **attacks** a hacker may apply before Normal training: JPEG quality 10, grayscale, crop+flip augmentation.

Every trained network is cached (`cache_dir`, keyed by what determines it: spec, data, recipe, teacher), so a
killed evaluation resumes without retraining what finished, and clean-data references are shared by every release
of the same data.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .config import Recipe
from .data import ClassificationTensors, load_source, to_tensors
from .errors import UgeError
from .release import load_release
from .specs import ModelSpec, build_model
from .training import accuracy, train_classifier

PAPER_HACKER_ARCHS = ("cnn", "lenet", "mobilenetv2", "shufflenetv2")
ATTACKS = ("jpeg10", "grayscale", "augment")
TEST_SPLITS = ("test", "validation")


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
    scheme: str  # "Normal", "Distill", or an attack name
    clean: float  # test accuracy when trained on the clean split
    protected: float  # test accuracy when trained on the protected split

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
    authorized: list[dict]  # the card's authorized entries
    release_dir: Path


def load_evaluation_data(release_dir: str | Path, clean_source, config: EvaluateConfig) -> EvaluationData:
    """Read the release's protected split and the matching clean rows and test split of `clean_source`."""
    from .card import read_uge_block

    from .hub import fetch_release

    release_dir = fetch_release(release_dir)
    uge = read_uge_block(release_dir)
    split = uge["protected_splits"][0]
    image_column, label_column = uge["columns"]["image"], uge["columns"]["label"]
    size = tuple(uge["input"]["image_size"])
    names = uge["class_names"]
    released = load_release(release_dir, [split])[split]
    clean_splits = load_source(clean_source)
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
    recipe = Recipe(**uge["recipe"])
    if config.epochs is not None:
        recipe = dataclasses.replace(recipe, epochs=config.epochs)
    test = tensors(clean_splits[test_name], config.test_rows)
    return EvaluationData(clean, protected, test, recipe, uge["authorized"], release_dir)


def jpeg(images: Tensor, quality: int = 10) -> Tensor:
    """JPEG-compress each uint8 image at `quality` and decode it again."""
    import numpy as np
    from PIL import Image

    out = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, format="JPEG", quality=quality)
        out.append(torch.from_numpy(np.array(Image.open(buffer).convert("RGB"))).permute(2, 0, 1))
    return torch.stack(out)


def grayscale(images: Tensor) -> Tensor:
    """ITU-R 601 luma, replicated to three channels."""
    weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (images.float() * weights).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8).expand_as(images).contiguous()


class Trainer:
    """Trains networks with a recipe and caches them on disk by everything that determines the result."""

    def __init__(self, cache_dir: str | Path, device: torch.device | str = "cpu"):
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.device = device
        self.trained_here: set[str] = set()
        self.loaded_from_cache = 0  # networks trained by an earlier run (a timing of this run then covers less)

    def train(self, model: nn.Module, label: str, images: Tensor, labels: Tensor, recipe: Recipe,
              teacher: tuple[nn.Module, str] | None = None) -> tuple[nn.Module, str]:
        """Train `model` (or load it from the cache); returns it and its cache key (a teacher's identity)."""
        key = hashlib.sha256()
        for tensor in (*model.state_dict().values(), images, labels):
            key.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        key.update(json.dumps(dataclasses.asdict(recipe), sort_keys=True).encode())
        key.update((teacher[1] if teacher else "").encode())
        name = key.hexdigest()[:24]
        path = self.cache_dir / f"{name}.safetensors"
        if path.exists():
            model.load_state_dict(load_file(str(path)))
            self.loaded_from_cache += name not in self.trained_here
            return model.to(self.device), name
        train_classifier(model, images, labels, recipe, self.device, description=label,
                         teacher=teacher[0] if teacher else None)
        partial = path.with_name(path.name + ".partial")
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(partial))
        partial.replace(path)
        self.trained_here.add(name)
        return model, name


def evaluate(release_dir: str | os.PathLike, clean_source, config: EvaluateConfig | None = None,
             cache_dir: str | Path | None = None, device: torch.device | str | None = None) -> list[Row]:
    """Train every network of `config` on the clean and the protected data; return the table's rows.

    `release_dir` is a release folder or Hub id. Trained networks are cached in `cache_dir` (default: beside a
    local release, else in the working directory).
    """
    config = config or EvaluateConfig()
    data = load_evaluation_data(release_dir, clean_source, config)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    name = Path(os.fspath(release_dir)).name
    default_cache = Path(release_dir).parent / f"{name}.eval-cache" if Path(release_dir).is_dir() else Path(f"{name}.eval-cache")
    trainer = Trainer(cache_dir or default_cache, device)
    return run_protocol(data, config, trainer)


def run_protocol(data: EvaluationData, config: EvaluateConfig, trainer: Trainer) -> list[Row]:
    """The table: authorized, hackers Normal, Distill students, attacks; clean vs protected for each."""
    num_classes = len(data.clean.class_names)
    variants = {"clean": data.clean.images, "protected": data.protected.images}
    labels = data.clean.labels

    def measure(model_fn, label, images_of, recipe=data.recipe, teacher_of=None) -> dict[str, tuple]:
        results = {}
        for variant, images in images_of.items():
            teacher = teacher_of[variant] if teacher_of else None
            model, key = trainer.train(model_fn(), f"{label} on {variant}", images, labels, recipe, teacher)
            results[variant] = (accuracy(model, data.test.images, data.test.labels, trainer.device), model, key)
        return results

    rows: list[Row] = []
    teachers = {}
    for net in data.authorized:
        weights = load_file(str(data.release_dir / net["weights"]))
        released_hash = hashlib.sha256((data.release_dir / net["weights"]).read_bytes()).hexdigest()
        if released_hash != net["init_sha256"]:
            raise UgeError(f"{net['weights']} does not match the card's init_sha256: the release was altered")

        def authorized_model(spec=net["spec"], weights=weights):
            model = build_model(spec, num_classes)
            model.load_state_dict(weights)
            return model

        results = measure(authorized_model, f"authorized {net['spec']}", variants)
        rows.append(Row(net["spec"], "authorized", "Normal", results["clean"][0], results["protected"][0]))
        teachers.setdefault("first", {v: (r[1], r[2]) for v, r in results.items()})

    hackers = config.hackers or default_hackers(data.authorized[0]["spec"])
    for spec in hackers:
        results = measure(lambda spec=spec: build_model(spec, num_classes), f"hacker {spec}", variants)
        rows.append(Row(spec, "hacker", "Normal", results["clean"][0], results["protected"][0]))

    if config.distill:
        for spec in config.distill_students or hackers[:1]:
            results = measure(lambda spec=spec: build_model(spec, num_classes), f"distill {spec}", variants,
                              teacher_of=teachers["first"])
            rows.append(Row(spec, "hacker", "Distill", results["clean"][0], results["protected"][0]))

    for attack in config.attacks:
        if attack == "augment":
            recipe, attacked = dataclasses.replace(data.recipe, augmentation="crop+flip"), variants
        else:
            transform = jpeg if attack == "jpeg10" else grayscale
            recipe, attacked = data.recipe, {variant: transform(images) for variant, images in variants.items()}
        for spec in config.attack_hackers or hackers[:1]:
            results = measure(lambda spec=spec: build_model(spec, num_classes), f"{attack} {spec}", attacked, recipe)
            rows.append(Row(spec, "hacker", attack, results["clean"][0], results["protected"][0]))
    return rows


SCHEME_NAMES = {"Normal": "Normal", "Distill": "Distill", "jpeg10": "JPEG q10", "grayscale": "Grayscale",
                "augment": "Crop+flip"}


def markdown_table(rows: list[Row]) -> str:
    """Rows laid out like the paper's Table 1: network x scheme; clean, protected, change (accuracy %)."""
    lines = ["| network | role | scheme | clean | protected | change |", "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(
            f"| `{row.network}` | {row.role} | {SCHEME_NAMES[row.scheme]} | {100 * row.clean:.1f} | "
            f"{100 * row.protected:.1f} | {100 * row.change:+.1f} |"
        )
    return "\n".join(lines)


def bar_chart(rows: list[Row], path: str | Path, title: str = "") -> None:
    """Clean vs protected accuracy per row, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r.network}\n{SCHEME_NAMES[r.scheme]}" for r in rows]
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
    from huggingface_hub import DatasetCard

    from .release import portable

    path = Path(release_dir) / "README.md"
    card = DatasetCard.load(path)
    uge = card.data.to_dict()["uge"]
    uge["evaluation"] = {**portable(meta), "rows": [{**dataclasses.asdict(r), "change": round(r.change, 4)} for r in rows]}
    card.data.uge = uge
    section = (f"{EVALUATION_MARKER}\n## Evaluation (`uge-hf evaluate`)\n\nClean-test accuracy (%) of networks "
               f"trained on the clean and on the protected data with the card's recipe.\n\n{markdown_table(rows)}\n")
    text = card.text.split(EVALUATION_MARKER)[0].rstrip() + "\n\n" + section
    card.text = text
    card.save(str(path))
