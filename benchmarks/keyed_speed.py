"""Speed of the keyed method (issue 11, deliverable 10): the full CIFAR-10 train split, end to end, on this machine.

    python benchmarks/keyed_speed.py [--source ../shared/data/cifar10] [--rows 50000]

Times `uge_hf.protect(..., method="keyed")` from the loaded `Dataset` to the release written (decode, protect,
PNG encode, parquet, card), and the apply step alone (`uge_hf.key.protect_keyed` on the decoded uint8 tensor), and
reports img/s and the process's peak RSS. Writes benchmarks/results/keyed_speed.{json,md}.
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

import torch
from datasets import load_dataset

import uge_hf
from uge_hf.card import read_card
from uge_hf.data import to_tensors
from uge_hf.key import KeyGeometry, SecretKey, new_secret, protect_keyed

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default=str(HERE.parent.parent / "shared" / "data" / "cifar10"))
    parser.add_argument("--rows", type=int, default=50_000)
    args = parser.parse_args()
    os.environ.setdefault("UGE_HF_NO_PROGRESS", "1")
    train = load_dataset(args.source, split="train").select(range(args.rows))

    out = Path(tempfile.mkdtemp()) / "release"
    start = time.perf_counter()
    uge_hf.protect(train, output_dir=out, method="keyed", authorized="resnet18-w16-seed0")
    end_to_end = time.perf_counter() - start
    card = read_card(out)
    shutil.rmtree(out.parent)

    tensors = to_tensors(train, "img", "label")
    key = SecretKey(new_secret(), KeyGeometry(3, 8, 10), 10)
    stage = key.stage()
    start = time.perf_counter()
    for first in range(0, len(tensors.images), 2048):
        protect_keyed(tensors.images[first : first + 2048], tensors.labels[first : first + 2048], key, 10, first_row=first, stage=stage)
    apply_seconds = time.perf_counter() - start

    payload = {
        "rows": args.rows,
        "end_to_end_seconds": round(end_to_end, 1),
        "end_to_end_img_per_s": round(args.rows / end_to_end),
        "apply_seconds": round(apply_seconds, 2),
        "apply_img_per_s": round(args.rows / apply_seconds),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "invariance": card.results.method_results["invariance"],
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()},
        "command": "python benchmarks/keyed_speed.py",
    }
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    (results / "keyed_speed.json").write_text(json.dumps(payload, indent=2) + "\n")
    (results / "keyed_speed.md").write_text(
        f"# Keyed method speed: CIFAR-10 train, {args.rows} rows, {os.cpu_count()} CPUs\n\n"
        f"| what | seconds | img/s |\n|---|---|---|\n"
        f"| end to end (Dataset -> release written) | {payload['end_to_end_seconds']} | {payload['end_to_end_img_per_s']} |\n"
        f"| apply step (`protect_keyed` on uint8 tensors) | {payload['apply_seconds']} | {payload['apply_img_per_s']} |\n\n"
        f"Peak RSS {payload['peak_rss_mib']} MiB. Targets (issue 11/14): end to end <= 120 s; apply >= 5,000 img/s.\n"
    )
    print((results / "keyed_speed.md").read_text())


if __name__ == "__main__":
    main()
