"""Build examples/cifar10-sample: a small, class-balanced CIFAR-10 slice for demos and tests.

Takes the first 50 training and 20 test images of each class, in the source's row order, so the
sample is deterministic and keeps the source schema (``img``: Image, ``label``: ClassLabel).

    python examples/make_sample.py [--source ../shared/data/cifar10] [--out examples/cifar10-sample]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import datasets

REPO_ROOT = Path(__file__).resolve().parents[1]
PER_CLASS = {"train": 50, "test": 20}

CARD = """\
---
pretty_name: CIFAR-10 sample ({total} images)
license: unknown
task_categories:
- image-classification
size_categories:
- n<1K
configs:
- config_name: default
  default: true
  data_files:
  - split: train
    path: data/train-00000-of-00001.parquet
  - split: test
    path: data/test-00000-of-00001.parquet
---
# CIFAR-10 sample ({total} images)

A {total}-image slice of CIFAR-10 for demos and tests: {train_per_class} training and {test_per_class}
test images per class ({train} train, {test} test), the first of each class in the source's row order.
Same schema as the Hub's `cifar10`: `img` (Image, 32x32 RGB) and `label` (ClassLabel: {names}).
Built by `examples/make_sample.py`.

CIFAR-10 was collected by Alex Krizhevsky, Vinod Nair and Geoffrey Hinton (Krizhevsky, *Learning
Multiple Layers of Features from Tiny Images*, 2009) and is distributed without a formal license;
cite the report when you use it. The images come from a JPEG-compressed copy, so pixels differ
slightly from the original release.
"""


def balanced_slice(ds: datasets.Dataset, per_class: int) -> datasets.Dataset:
    """The first ``per_class`` rows of every class, kept in the dataset's order."""
    taken: dict[int, int] = {}
    indices = []
    for row, label in enumerate(ds.with_format("arrow")["label"].to_pylist()):
        if taken.get(label, 0) < per_class:
            taken[label] = taken.get(label, 0) + 1
            indices.append(row)
    short = [name for i, name in enumerate(ds.features["label"].names) if taken.get(i, 0) < per_class]
    if short:
        raise SystemExit(f"the source has fewer than {per_class} images of: {', '.join(short)}")
    return ds.select(indices)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=REPO_ROOT / "../shared/data/cifar10",
                        help="CIFAR-10 with train/test splits, columns img and label")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "examples/cifar10-sample")
    args = parser.parse_args()

    source = datasets.load_dataset(str(args.source.resolve()))
    (args.out / "data").mkdir(parents=True, exist_ok=True)
    for split, per_class in PER_CLASS.items():
        balanced_slice(source[split], per_class).to_parquet(str(args.out / f"data/{split}-00000-of-00001.parquet"))

    names = source["train"].features["label"].names
    sizes = {split: per_class * len(names) for split, per_class in PER_CLASS.items()}
    (args.out / "README.md").write_text(CARD.format(
        total=sum(sizes.values()), train=sizes["train"], test=sizes["test"],
        train_per_class=PER_CLASS["train"], test_per_class=PER_CLASS["test"], names=", ".join(names),
    ))
    print(f"wrote {args.out} ({sizes['train']} train, {sizes['test']} test)")


if __name__ == "__main__":
    main()
