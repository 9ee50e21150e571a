"""Design sweep of the lock method's poison on the validation slice (issue 15): the experiment behind its default.

    python benchmarks/lock/poison_sweep.py POISON [POISON ...]      # clean, texture, blocks, autoregressive, ...
    python benchmarks/lock/poison_sweep.py error-minimizing         # Huang et al. 2021 (error_minimizing.py here)
    python benchmarks/lock/poison_sweep.py adversarial              # Fowl et al. 2021 (uge_hf.adversarial)

Train rows 0-4,999 are poisoned (x_u = clip(x + delta), |delta| <= 10 levels); every network is scored on train
rows 8,000-9,999 (never a test row). Recipe: 15 epochs, SGD 0.05 cosine, batch 128, crop+flip; one key and one
training seed per cell. Hackers: cnn-w16-seed1 and resnet18-w16-seed1 trained Normally, and cnn-w16-seed1 after
each attack (JPEG quality 10, grayscale, linear projection); `distill`: cnn-w16-seed1 trained by KL to the key
holder's network (resnet18-w16-seed0 trained on the clean rows, which is what unlocking gives it) on the poisoned
rows, the protocol's Distill row; `clean` trains the same on the clean rows (the ratios' denominators). Trained
networks are cached in benchmarks/.work/keyed-sweep (shared with the keyed sweep); results are appended to benchmarks/results/lock_sweep.jsonl and the table rewritten in lock_sweep.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "keyed"))
sys.path.insert(1, str(HERE))

from sweep import cached_train, rows  # noqa: E402  (the keyed sweep's cache and rows: one validation slice)

from uge_hf.attacks import grayscale, jpeg, linear_projection_stage  # noqa: E402
from uge_hf.config import Recipe  # noqa: E402
from uge_hf.poisons import apply_poison, poison  # noqa: E402
from uge_hf.specs import build_model  # noqa: E402
from uge_hf.training import accuracy  # noqa: E402

RESULTS = HERE.parent / "results"
SWEEP_KEY = bytes(range(32))  # a fixed, public key: this sweep measures designs, not secrecy
BOUND = 10
COLUMNS = ["cnn-w16-seed1", "resnet18-w16-seed1", "cnn distill", "cnn jpeg10", "cnn grayscale", "cnn linear-projection"]
TEACHER = "resnet18-w16-seed0"  # the key holder's network in the CPU protocol
SURROGATE = "resnet18-w16-seed7"  # the adversarial poison's surrogate (the library's default): not the teacher's init


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("poisons", nargs="+")
    parser.add_argument("--only", action="append", choices=COLUMNS, help="columns to train (default: all)")
    args = parser.parse_args()
    train, held_out = rows()
    recipe = Recipe(epochs=15, batch_size=128)
    cache = HERE.parent / ".work" / "keyed-sweep"
    cache.mkdir(parents=True, exist_ok=True)
    for name in args.poisons:
        record = {"poison": name, "rows": "train 0-4999, scored on train 8000-9999", "bound": BOUND}
        images = train.images
        if name != "clean":
            t = time.time()
            if name == "error-minimizing":  # trains a surrogate: measured here before any library poison
                from error_minimizing import error_minimizing

                delta = error_minimizing(train.images, train.labels, 10, BOUND)
            elif name == "adversarial":  # Fowl et al. 2021: a surrogate trained on the clean rows (uge_hf.adversarial)
                from uge_hf.adversarial import targeted_adversarial

                surrogate = cached_train(cache, build_model(SURROGATE, 10), f"clean {SURROGATE}", train.images,
                                         train.labels, recipe, None)  # what uge_hf.adversarial.train_surrogate trains
                delta = targeted_adversarial(surrogate, train.images, train.labels, 10, BOUND, SWEEP_KEY, 0)
            else:
                delta = poison(name, SWEEP_KEY, train.labels, 10, tuple(train.images.shape[1:]), BOUND)
            images = apply_poison(train.images, delta)
            diff = images.float() - train.images.float()
            record.update(protect_seconds=round(time.time() - t, 2), mean_abs_levels=round(diff.abs().mean().item(), 3),
                          linf=diff.abs().max().item())
        for column in args.only or COLUMNS:
            spec, _, attack = column.partition(" ")
            spec = "cnn-w16-seed1" if spec == "cnn" else spec
            data, stage, test = images, None, held_out.images
            if attack == "jpeg10":
                data = jpeg(images)
            elif attack == "grayscale":
                data = grayscale(images)
            elif attack == "linear-projection":
                stage = linear_projection_stage(images, train.labels, 10)
            t = time.time()
            if attack == "distill":
                teacher = cached_train(cache, build_model(TEACHER, 10), f"clean {TEACHER}", train.images, train.labels,
                                       recipe, None)
                model = cached_train(cache, build_model(spec, 10), f"{name} {column}", data, train.labels, recipe, None,
                                     teacher)
                # how often the key holder's network still names the true class of a poisoned row (what Distill copies)
                record["teacher accuracy on poisoned rows"] = round(100 * accuracy(teacher, data, train.labels), 1)
            else:
                model = cached_train(cache, build_model(spec, 10), f"{name} {column}", data, train.labels, recipe, stage)
            record[column] = round(100 * accuracy(model, test, held_out.labels, input_stage=stage), 1)
            print(name, column, record[column], f"{time.time() - t:.0f}s", flush=True)
        with open(RESULTS / "lock_sweep.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
    write_table()


def write_table() -> None:
    merged: dict[str, dict] = {}  # a poison's later runs (e.g. `--only` a new column) add to its row
    for line in (RESULTS / "lock_sweep.jsonl").read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            merged.setdefault(record["poison"], {}).update(record)
    records = list(merged.values())
    clean = {}
    for r in records:
        if r["poison"] == "clean":
            clean.update({c: r[c] for c in COLUMNS if c in r})
    lines = ["# Lock poison sweep (validation slice: train rows 0-4,999 poisoned, scored on train rows 8,000-9,999)", "",
             "One key, one seed per cell; accuracy % (ratio to the same network and attack on clean rows).",
             "`python benchmarks/lock/poison_sweep.py POISON` made each row; bound 10 levels.", "",
             "| poison | mean abs (levels) | " + " | ".join(COLUMNS) + " |", "|---|---|" + "---|" * len(COLUMNS)]
    for r in records:
        cells = []
        for c in COLUMNS:
            if c not in r:
                cells.append("")
            elif r["poison"] != "clean" and clean.get(c):
                cells.append(f"{r[c]} ({r[c] / clean[c]:.2f}x)")
            else:
                cells.append(str(r[c]))
        note = f" ({r['note']})" if r.get("note") else ""
        lines.append(f"| {r['poison']}{note} | {r.get('mean_abs_levels') or ''} | " + " | ".join(cells) + " |")
    (RESULTS / "lock_sweep.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
