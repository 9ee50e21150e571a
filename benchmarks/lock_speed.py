"""Speed and size of the lock method (issue 15, deliverable 5): CIFAR-10 train, end to end, on this machine.

    python benchmarks/lock_speed.py [--source ../shared/data/cifar10] [--rows 50000]

Times `uge_hf.protect(..., method="lock")` from the loaded `Dataset` to the release written (decode, poison, seal and
check every row's unlock data, PNG encode, parquet, card) and `uge_hf.unlock` of the whole release (open every row,
rebuild the images); reports img/s, the unlock data's bytes per image beside the protected images' PNG bytes, and
the process's peak RSS. Writes benchmarks/results/lock_speed.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from datasets import load_dataset

import uge_hf
from uge_hf.card import read_card

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default=str(HERE.parent.parent / "shared" / "data" / "cifar10"))
    parser.add_argument("--rows", type=int, default=50_000)
    args = parser.parse_args()
    os.environ.setdefault("UGE_HF_NO_PROGRESS", "1")
    train = load_dataset(args.source, split="train").select(range(args.rows))
    work = Path(tempfile.mkdtemp(prefix="uge-lock-speed-"))
    try:
        out = work / "release"
        start = time.time()
        uge_hf.protect(train, output_dir=out, method="lock", authorized="resnet18-w16-seed0")
        protect_seconds = time.time() - start
        card = read_card(out)
        start = time.time()
        unlocked = uge_hf.unlock(out, key=work / "release.private")["train"]
        unlocked_pixels = np.stack([np.asarray(image) for image in unlocked["img"]])
        unlock_seconds = time.time() - start
        source_pixels = np.stack([np.asarray(image.convert("RGB")) for image in train["img"]])
        exact = int((unlocked_pixels == source_pixels).reshape(len(source_pixels), -1).all(1).sum())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    unlock = card.results.method_results["unlock"]
    payload = {
        "rows": args.rows,
        "poison": card.method_fields["lock"]["poison"],
        "protect_seconds": round(protect_seconds, 1),
        "protect_img_per_s": round(args.rows / protect_seconds),
        "unlock_seconds": round(unlock_seconds, 1),
        "unlock_img_per_s": round(args.rows / unlock_seconds),
        "rows_unlocked_exactly": exact,
        "unlock_bytes_per_row": unlock["bytes_per_row"],
        "protected_png_bytes_per_row": unlock["protected_png_bytes_per_row"],
        "unlock_to_png_ratio": unlock["ratio_to_png"],
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "command": "python benchmarks/lock_speed.py",
    }
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    (results / "lock_speed.json").write_text(json.dumps(payload, indent=2) + "\n")
    (results / "lock_speed.md").write_text(
        f"# Lock method speed and size: CIFAR-10 train, {args.rows} rows, {os.cpu_count()} CPUs\n\n"
        "One run (`python benchmarks/lock_speed.py`); the machine may have been shared with other jobs.\n\n"
        "| step | seconds | img/s |\n|---|---|---|\n"
        f"| protect, end to end (decode, poison, seal + check every row, PNG, parquet, card) | {payload['protect_seconds']} | {payload['protect_img_per_s']} |\n"
        f"| `uge_hf.unlock` of the release (open every row, rebuild the images) | {payload['unlock_seconds']} | {payload['unlock_img_per_s']} |\n\n"
        f"Rows unlocked bit for bit: {exact} of {args.rows}. Unlock data: {payload['unlock_bytes_per_row']} bytes per row"
        f" (every row the same), {payload['unlock_to_png_ratio']}x the protected images' PNG ({payload['protected_png_bytes_per_row']}"
        f" bytes per row). Peak RSS {payload['peak_rss_mib']} MiB. Poison: {payload['poison']}.\n"
    )
    print((results / "lock_speed.md").read_text())


if __name__ == "__main__":
    main()
