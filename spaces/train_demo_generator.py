"""Train the small generator the demo ships, on the embedded CIFAR-10 sample, offline (~3 min on 2 CPU cores).

    .venv/bin/python spaces/train_demo_generator.py            # writes spaces/generator/ and spaces/samples/
    .venv/bin/python spaces/train_demo_generator.py --keep-release out/demo-release   # also keep the release

It runs `uge_hf.protect(..., release_generator=True)` with the surrogate encoder and the Makefile's `demo`
settings (a narrower generator: 8 base channels, so the weights stay a few hundred KB), then copies
`generator.safetensors` and what is needed to rebuild G (rho, channels, blocks, seed) plus a summary of the
release's card (authorized spec, init sha256, measured figures) into `spaces/generator/`. A few training images
are written as PNGs into `spaces/samples/` for the demo's "pick a sample" row.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SAMPLE = ROOT / "examples" / "cifar10-sample"

SETTINGS = dict(
    method="gradient-matching",
    authorized="resnet18-w16-seed0",
    encoder="surrogate",
    rho=0.04,
    seed=0,
    recipe={"epochs": 15, "batch_size": 64},
    generator_epochs=10,
    batch_size=64,
    generator_channels=8,
    generator_blocks=4,
    release_generator=True,
)
SAMPLE_CLASSES = ("airplane", "cat", "frog", "ship", "truck", "horse")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "generator", help="where the generator and its config go")
    parser.add_argument("--samples", type=Path, default=HERE / "samples", help="where the sample PNGs go")
    parser.add_argument("--keep-release", type=Path, default=None, help="also keep the whole release folder here")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    import uge_hf
    from uge_hf.card import read_card

    with tempfile.TemporaryDirectory() as tmp:
        release = args.keep_release or Path(tmp) / "release"
        uge_hf.protect(str(SAMPLE), output_dir=release, overwrite=True, **SETTINGS)
        uge = read_card(release).to_dict()  # summarised as JSON below
        args.out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(release / "generator.safetensors", args.out / "generator.safetensors")
        config = uge["config"]
        summary = {
            "rho": config["rho"],
            "pixel_bound": uge["pixel_bound"],
            "generator_channels": config["generator_channels"],
            "generator_blocks": config["generator_blocks"],
            "seed": config["seed"],
            "authorized": uge["authorized"],
            "encoder": uge["encoder"]["name"],
            "trained_on": "examples/cifar10-sample (train split, 500 CIFAR-10 images, 32x32)",
            "image_size": uge["input"]["image_size"],
            "class_names": uge["class_names"],
            "results": uge["results"],
            "uge_hf_version": uge["uge_hf_version"],
            "settings": SETTINGS,
        }
        (args.out / "config.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_samples(args.samples)
    size = (args.out / "generator.safetensors").stat().st_size
    print(f"generator: {args.out / 'generator.safetensors'} ({size / 1024:.0f} KB); samples: {args.samples}")


def write_samples(folder: Path) -> None:
    """One training image per class in SAMPLE_CLASSES, as lossless PNGs named after the class."""
    from datasets import load_dataset

    train = load_dataset(str(SAMPLE), split="train")
    names = train.features["label"].names
    folder.mkdir(parents=True, exist_ok=True)
    wanted = {names.index(name): name for name in SAMPLE_CLASSES}
    for row in train:
        name = wanted.pop(row["label"], None)
        if name is not None:
            row["img"].convert("RGB").save(folder / f"{name}.png")
        if not wanted:
            break


if __name__ == "__main__":
    main()
