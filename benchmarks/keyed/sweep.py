"""Design sweep of the keyed method's signal on the validation slice (issue 11): the experiment behind its defaults.

    python benchmarks/keyed/sweep.py VARIANT [VARIANT ...]       # e.g. clean t8g10-random t8g10-fixed
    python benchmarks/keyed/sweep.py --list

Train rows 0-4,999 are protected; every network is scored on train rows 8,000-9,999 (never a test row). Recipe:
15 epochs, SGD 0.05 cosine, batch 128, crop+flip. Hackers: cnn-w16-seed1 and resnet18-w16-seed1 (another
architecture, and the authorized one with another init); `+auth` in a variant's name also trains the keyed
authorized network resnet18-w16-seed0 behind the key stage. One key (seed below) and one training seed per cell.
Trained networks are cached in benchmarks/.work/keyed-sweep; results are appended to
benchmarks/results/keyed_sweep.jsonl and the table rewritten in keyed_sweep.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import time
from pathlib import Path

from datasets import load_dataset

from uge_hf.config import Recipe
from uge_hf.data import to_tensors
from uge_hf.key import KeyGeometry, SecretKey, protect_keyed
from uge_hf.specs import build_model
from uge_hf.training import accuracy, train_classifier

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parents[1].parent / "shared" / "data" / "cifar10"
RESULTS = HERE.parent / "results"
SWEEP_KEY = bytes(range(32))  # a fixed, public key: this sweep measures designs, not secrecy
HACKERS = ["cnn-w16-seed1", "resnet18-w16-seed1"]
AUTHORIZED = "resnet18-w16-seed0"
BOUND = 10  # rho = 0.04

# tTILE gGROUPS [rGRAIN] SIGNS [aAMPLITUDE] [pPULL]: e.g. t8g10-random, t8g12r4-fixed, t8g10-fixed-a6
VARIANT = re.compile(r"t(?P<tile>\d+)g(?P<groups>\d+)(?:r(?P<grain>\d+))?-(?P<signs>random|image|fixed)(?:-a(?P<amplitude>\d+))?(?:-p(?P<pull>\d+))?(?P<auth>\+auth)?")


def rows():
    data = load_dataset(str(SOURCE))["train"]
    train = to_tensors(data.select(range(5000)), "img", "label")
    held_out = to_tensors(data.select(range(8000, 10000)), "img", "label")
    return train, held_out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="*")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--hacker", action="append", help=f"hackers to train (default: {' '.join(HACKERS)})")
    args = parser.parse_args()
    train, held_out = rows()
    recipe = Recipe(epochs=args.epochs, batch_size=128)
    cache = HERE.parents[0] / ".work" / "keyed-sweep"
    cache.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(exist_ok=True)
    for name in args.variants:
        record = {"variant": name, "epochs": args.epochs, "rows": "train 0-4999, scored on train 8000-9999"}
        stage = None
        if name.startswith("clean"):
            images = train.images
            tile, groups, grain = (int(v) for v in re.fullmatch(r"clean(?:-t(\d+)g(\d+)(?:r(\d+))?)?", name).groups(default="1"))
            key = SecretKey(SWEEP_KEY, KeyGeometry(3, tile, groups, grain), 10)
            stage = key.stage() if "-t" in name else None
        else:
            match = VARIANT.fullmatch(name)
            if match is None:
                raise SystemExit(f"unknown variant {name}")
            key = SecretKey(SWEEP_KEY, KeyGeometry(3, int(match["tile"]), int(match["groups"]), int(match["grain"] or 1)), 10)
            stage = key.stage()
            t = time.time()
            out = protect_keyed(train.images, train.labels, key, BOUND, signs=match["signs"],
                                amplitude=int(match["amplitude"]) if match["amplitude"] else None,
                                pull=int(match["pull"]) if match["pull"] else None, stage=stage)
            images = out.images
            diff = images.float() - train.images.float()
            record.update(protect_seconds=round(time.time() - t, 2), mean_abs_levels=round(diff.abs().mean().item(), 3),
                          rms_levels=round(diff.pow(2).mean().sqrt().item(), 3), linf=diff.abs().max().item(),
                          invariance_max=out.invariance_levels.max().item())
        nets = list(args.hacker or HACKERS)
        if name.endswith("+auth") or (name.startswith("clean") and stage is not None):
            nets.append("keyed-" + AUTHORIZED)
        if name.startswith("clean") and stage is not None:
            nets = ["keyed-" + AUTHORIZED]
        for spec in nets:
            keyed = spec.startswith("keyed-")
            model = build_model(spec.removeprefix("keyed-"), 10)
            t = time.time()
            model = cached_train(cache, model, f"{name} {spec}", images, train.labels, recipe, stage if keyed else None)
            acc = accuracy(model, held_out.images, held_out.labels, input_stage=stage if keyed else None)
            record[spec] = round(100 * acc, 1)
            print(name, spec, record[spec], f"{time.time() - t:.0f}s", flush=True)
        with open(RESULTS / "keyed_sweep.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
    write_table()


def cached_train(cache: Path, model, label, images, labels, recipe, stage, teacher=None):
    """train_classifier, cached by everything that determines the result (init, data, recipe, key stage; with a
    `teacher`, the Distill attack's KL to it, keyed by its weights too)."""
    import hashlib

    from safetensors.torch import load_file, save_file

    key = hashlib.sha256(b"distill" if teacher is not None else b"")
    tensors = [*model.state_dict().values(), images, labels, *(stage.state_dict().values() if stage is not None else []),
               *(teacher.state_dict().values() if teacher is not None else [])]
    for tensor in tensors:
        key.update(tensor.detach().contiguous().numpy().tobytes())
    key.update(json.dumps(dataclasses.asdict(recipe), sort_keys=True).encode())
    path = cache / f"{key.hexdigest()[:24]}.safetensors"
    if path.exists():
        model.load_state_dict(load_file(str(path)))
        return model
    train_classifier(model, images, labels, recipe, description=label, input_stage=stage, teacher=teacher)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model


def write_table() -> None:
    records = [json.loads(line) for line in (RESULTS / "keyed_sweep.jsonl").read_text().splitlines() if line.strip()]
    columns = ["keyed-" + AUTHORIZED, *HACKERS]
    lines = ["# Keyed signal sweep (validation slice: train rows 0-4,999 protected, scored on train rows 8,000-9,999)",
             "", "One key, one seed per cell; accuracy %. `python benchmarks/keyed/sweep.py VARIANT` made each row.", "",
             "| variant | epochs | mean abs (levels) | rms | invariance max | " + " | ".join(columns) + " |",
             "|---|---|---|---|---|" + "---|" * len(columns)]
    for r in records:
        lines.append(f"| {r['variant']} | {r['epochs']} | {r.get('mean_abs_levels', '')} | {r.get('rms_levels', '')} | "
                     f"{r.get('invariance_max', '')} | " + " | ".join(str(r.get(c, "")) for c in columns) + " |")
    (RESULTS / "keyed_sweep.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
