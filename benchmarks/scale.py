"""How protect() scales with the number of rows (issue 14, items 1-3): wall time, rows/s and peak RSS per size.

    python benchmarks/scale.py [--rows 10000 100000] [--size 224] [--method keyed] [--shard-rows N] [--work-dir DIR]

For each row count, a synthetic image-classification dataset (10 classes, smooth images at SIZE x SIZE, PNG, made on
the fly and kept in the work folder as parquet shards) is protected end to end by `uge_hf.protect` in a fresh
process (read, decode, protect, PNG encode, parquet, card, re-check), whose peak RSS is its own `ru_maxrss`.
Writes benchmarks/results/scale.{json,md}.

The target (issue 14): peak RSS flat when rows grow 10x (<= 1.5x). Today's writer holds a split in memory as uint8
tensors (the source and the protected copy, 2 x rows x 3 x SIZE^2 bytes, plus the encoded split), so RSS grows with
rows; a size whose estimate (protect()'s own, `validate.BYTES_PER_PIXEL`) exceeds 80% of the memory available is
skipped and reported (protect() itself refuses it up front when it exceeds the machine's memory).
`--shard-rows N` measures the keyed method's shard-by-shard writer (`ProtectConfig.shard_rows`) instead, whose
memory is one shard's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
NUM_CLASSES = 10
ROWS_PER_SOURCE_SHARD = 2_000


def synthetic_source(folder: Path, rows: int, size: int) -> Path:
    """A parquet dataset folder of `rows` smooth RGB images (SIZE x SIZE, PNG) and labels; reused if complete."""
    done = folder / ".complete"
    if done.exists():
        return folder
    import numpy as np
    from datasets import ClassLabel, Dataset, Features, Image

    shutil.rmtree(folder, ignore_errors=True)
    features = Features({"image": Image(), "label": ClassLabel(names=[f"class{i}" for i in range(NUM_CLASSES)])})
    grid = np.linspace(0, 1, size, dtype=np.float32)
    shards = -(-rows // ROWS_PER_SOURCE_SHARD)
    for shard in range(shards):  # one shard in memory at a time
        first, last = shard * ROWS_PER_SOURCE_SHARD, min(rows, (shard + 1) * ROWS_PER_SOURCE_SHARD)

        def generate(first=first, last=last):
            for row in range(first, last):
                rng = np.random.default_rng(row)
                a, b, c = rng.uniform(0.5, 6, 3)
                x, y = np.meshgrid(grid, grid)
                image = np.stack([np.sin(a * x + b * y + k) for k in range(3)], axis=-1) * 90 + 128
                image += rng.normal(0, 4, image.shape)  # a little texture, as photographs have
                yield {"image": {"bytes": _png(np.clip(image, 0, 255).astype(np.uint8)), "path": None},
                       "label": row % NUM_CLASSES}

        part = Dataset.from_generator(generate, features=features, cache_dir=str(folder.parent / "hf-cache"))
        part.to_parquet(str(folder / "data" / f"train-{shard:05d}-of-{shards:05d}.parquet"))
        part.cleanup_cache_files()
    done.write_text(json.dumps({"rows": rows, "size": size}))
    return folder


def _png(pixels) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def child(rows: int, size: int, method: str, work: Path, shard_rows: int | None = None) -> dict:
    """One measurement, in this (fresh) process: protect the synthetic set of `rows` rows, report time and RSS."""
    import datasets.utils

    import uge_hf

    datasets.utils.disable_progress_bars()  # making the source is not what is measured
    source = synthetic_source(work / f"source-{rows}-{size}", rows, size)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    output = work / f"release-{rows}-{size}"
    anonymous = _AnonymousPeak()
    start = time.perf_counter()
    uge_hf.protect(str(source), output_dir=output, method=method, authorized="resnet18-w16-seed0", overwrite=True,
                   shard_rows=shard_rows)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    anonymous.stop()
    shutil.rmtree(output, ignore_errors=True)
    shutil.rmtree(output.parent / f"{output.name}.private", ignore_errors=True)
    return {"rows": rows, "size": size, "method": method, "shard_rows": shard_rows, "seconds": round(seconds, 1),
            "rows_per_s": round(rows / seconds, 1), "peak_rss_mib": round(peak / 1024),
            "rss_before_protect_mib": round(before / 1024), "peak_anonymous_mib": anonymous.peak_mib}


class _AnonymousPeak:
    """The largest RssAnon (memory the process allocated itself) seen, sampled every 0.1 s in a thread.

    ru_maxrss also counts the pages of memory-mapped files that were read (datasets maps its Arrow files): those
    are the page cache, which the kernel reclaims, and they grow with what was read, not with what is held."""

    def __init__(self):
        import threading

        self.peak_mib, self._done = 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self):
        while not self._done.wait(0.1):
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    self.peak_mib = max(self.peak_mib, round(int(line.split()[1]) / 1024))

    def stop(self):
        self._done.set()
        self._thread.join()


def estimated_gib(rows: int, size: int) -> float:
    """What `protect()` itself estimates for today's in-memory writer (`validate.BYTES_PER_PIXEL` per protected pixel
    and channel), and refuses up front beyond the machine's memory."""
    from uge_hf.validate import BYTES_PER_PIXEL

    return rows * 3 * size * size * BYTES_PER_PIXEL / 2**30


def available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return float("inf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--method", default="keyed", choices=["keyed", "lock"])
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/uge-scale"))
    parser.add_argument("--results-dir", type=Path, default=HERE / "results")
    parser.add_argument("--shard-rows", type=int, help="the shard-by-shard writer (keyed), this many rows per shard;"
                        " default: today's in-memory writer")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("UGE_HF_NO_PROGRESS", "1")
    args.work_dir.mkdir(parents=True, exist_ok=True)
    if args.child is not None:
        print(json.dumps(child(args.child, args.size, args.method, args.work_dir, args.shard_rows)))
        return

    runs = []
    for rows in args.rows:
        need, have = estimated_gib(min(rows, args.shard_rows or rows), args.size), available_gib()
        if need > 0.8 * have:
            runs.append({"rows": rows, "size": args.size, "method": args.method,
                         "skipped": f"protect() estimates ~{need:.0f} GiB for today's in-memory writer,"
                                    f" {have:.0f} GiB available (it refuses beyond the machine's memory)"})
            print(runs[-1], flush=True)
            continue
        command = [sys.executable, __file__, "--child", str(rows), "--size", str(args.size), "--method", args.method,
                   "--work-dir", str(args.work_dir), *(["--shard-rows", str(args.shard_rows)] if args.shard_rows else [])]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode < 0:  # killed by a signal: SIGKILL here is the out-of-memory killer
            runs.append({"rows": rows, "size": args.size, "method": args.method,
                         "skipped": f"killed by signal {-done.returncode} (9: out of memory) while protecting"})
            print(runs[-1], flush=True)
            continue
        if done.returncode != 0:
            raise SystemExit(f"the run of {rows} rows failed:\n{done.stderr[-3000:]}")
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(runs[-1], flush=True)

    measured = [r for r in runs if "peak_rss_mib" in r]
    growth = (measured[-1]["peak_rss_mib"] / measured[0]["peak_rss_mib"]) if len(measured) > 1 else None
    anonymous = (measured[-1]["peak_anonymous_mib"] / measured[0]["peak_anonymous_mib"]) if len(measured) > 1 else None
    payload = {"runs": runs, "peak_rss_growth": round(growth, 2) if growth else None,
               "peak_anonymous_growth": round(anonymous, 2) if anonymous else None,
               "target": "peak RSS <= 1.5x when rows grow 10x", "cpus": os.cpu_count(),
               "machine": platform.platform(), "python": platform.python_version()}
    args.results_dir.mkdir(parents=True, exist_ok=True)
    name = f"scale_{args.method}_{args.size}px" + (f"_shards{args.shard_rows}" if args.shard_rows else "")
    (args.results_dir / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    writer = f"shard by shard, {args.shard_rows} rows per shard" if args.shard_rows else "each split in memory"
    lines = [f"# protect() at scale: {args.method}, {args.size}x{args.size} synthetic images, {writer}", "",
             "| rows | seconds | rows/s | peak RSS (MiB) | peak anonymous RSS (MiB) |", "|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['rows']} | " + (f"{r['seconds']} | {r['rows_per_s']} | {r['peak_rss_mib']} |"
                                             f" {r['peak_anonymous_mib']} |"
                                             if "peak_rss_mib" in r else f"skipped: {r['skipped']} | | | |"))
    lines += ["", f"Growth, largest / smallest measured: peak RSS {payload['peak_rss_growth']}, peak anonymous RSS"
                  f" {payload['peak_anonymous_growth']} (target <= 1.5 for 10x rows). Peak RSS also counts the pages of"
                  " the memory-mapped Arrow files that were read (page cache); anonymous RSS is what the process holds."]
    (args.results_dir / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
