"""How protect() scales with the number of rows and processes (issue 14, items 1-3): wall time, img/s, peak RSS.

    python benchmarks/scale.py [--rows 10000 100000] [--size 224] [--method keyed] [--shard-rows N]
                               [--source FOLDER] [--processes 1 2] [--name NAME] [--work-dir DIR]

Each measurement protects a dataset end to end with `uge_hf.protect` (read, decode, protect, PNG encode, parquet,
card, re-check) in fresh processes, whose peak RSS is their own `ru_maxrss`:

- a synthetic image-classification set (10 classes, smooth images at SIZE x SIZE, PNG), one per `--rows`, made on
  the fly by a separate process and kept in the work folder as parquet shards; or
- `--source FOLDER`, a dataset folder (e.g. CIFAR-10, Hub schema `img` / `label`): every row of it.

`--streaming` reads the source as a stream (`protect(streaming=True)`) instead of memory-mapping the datasets cache's
Arrow files: the pages of a memory-mapped file that were read count in RSS (file-backed, reclaimable page cache), so a
map-style source's RSS grows with the rows read even when what the process holds (anonymous RSS) does not.

`--processes 1 2` runs each dataset once per count; N > 1 processes are launched as `torchrun` / `accelerate launch`
ranks are (`RANK` / `WORLD_SIZE` in the environment; the shard writer needs no process group), each reporting its
own peak RSS. Runs after the first use the first run's key, and their release is compared byte for byte with the
first one's (every file). With `--shard-rows`, a thread in each process records its RSS each time a shard finishes
(`per_shard`), so whether memory stays flat is visible even in a run that is stopped: SIGTERM / Ctrl-C stops the
running measurement, and the results written then hold what it measured, marked as cut. The apply step
(`protect_keyed` alone, inside the run) is timed too. Writes benchmarks/results/NAME.{json,md}.

Without `--shard-rows` the in-memory writer is measured, which holds a split as uint8 tensors (source and protected
copy, 2 x rows x 3 x SIZE^2 bytes, plus the encoded split); a size whose estimate (protect()'s own,
`validate.BYTES_PER_PIXEL`) exceeds 80% of the memory available is skipped and reported.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import threading
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


def child(source: Path, method: str, output: Path, shard_rows: int | None, key_file: str | None,
          trace: Path, streaming: bool = False) -> dict:
    """One process of one measurement (a rank when WORLD_SIZE is set): protect `source`, report time and RSS."""
    import datasets.utils

    import uge_hf
    from uge_hf.methods import keyed

    datasets.utils.disable_progress_bars()
    apply = _timed(keyed, "protect_keyed")  # the apply step, inside the real run (the keyed method's rows)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sampler = _Sampler(output.parent / f"{output.name}.uge-work" / "shards", trace)
    start = time.perf_counter()
    uge_hf.protect(str(source), output_dir=output, method=method, authorized="resnet18-w16-seed0", overwrite=True,
                   shard_rows=shard_rows, key_file=key_file, streaming=streaming)
    seconds = time.perf_counter() - start
    sampler.stop()
    return {"rank": int(os.environ.get("RANK", "0")), "seconds": round(seconds, 1),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "rss_before_protect_mib": round(before / 1024), "peak_anonymous_mib": sampler.peak_anonymous_mib,
            "apply_seconds": round(apply["seconds"], 2), "apply_rows": apply["rows"]}


def _timed(module, name: str) -> dict:
    """Wrap `module.name` (a function of (images, ...)) to add up its seconds and rows; the totals, live."""
    real, totals = getattr(module, name), {"seconds": 0.0, "rows": 0}

    def timed(images, *args, **kwargs):
        start = time.perf_counter()
        out = real(images, *args, **kwargs)
        totals["seconds"] += time.perf_counter() - start
        totals["rows"] += len(images)
        return out

    setattr(module, name, timed)
    return totals


def _status_mib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 1024)
    return 0


class _Sampler:
    """Every 0.1 s in a thread: the largest RssAnon seen, and one line in `trace` (JSON) each time the number of
    finished shards in `shards` (the shard writer's statistics files, every rank's) grows.

    ru_maxrss also counts the pages of memory-mapped files that were read (datasets maps its Arrow files): those
    are the page cache, which the kernel reclaims, and they grow with what was read, not with what is held; RssAnon
    is what the process allocated itself."""

    def __init__(self, shards: Path, trace: Path):
        self.peak_anonymous_mib, self._shards, self._trace = 0, shards, trace
        self._start, self._seen, self._done = time.perf_counter(), 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self):
        while not self._done.wait(0.1):
            self.peak_anonymous_mib = max(self.peak_anonymous_mib, _status_mib("RssAnon"))
            done = len(list(self._shards.glob("*.json"))) if self._shards.is_dir() else 0
            if done > self._seen:
                self._seen = done
                line = {"shards_done": done, "seconds": round(time.perf_counter() - self._start, 1),
                        "rss_mib": _status_mib("VmRSS"), "anonymous_mib": _status_mib("RssAnon"),
                        "file_mib": _status_mib("RssFile"),
                        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
                with self._trace.open("a") as f:
                    f.write(json.dumps(line) + "\n")

    def stop(self):
        self._done.set()
        self._thread.join()


def estimated_gib(rows: int, size: int) -> float:
    """What `protect()` itself estimates for the in-memory writer (`validate.BYTES_PER_PIXEL` per protected pixel
    and channel), and refuses up front beyond the machine's memory."""
    from uge_hf.validate import BYTES_PER_PIXEL

    return rows * 3 * size * size * BYTES_PER_PIXEL / 2**30


def available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return float("inf")


def folder_digest(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under `folder`."""
    digests = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest = hashlib.sha256()
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            digests[str(path.relative_to(folder))] = digest.hexdigest()
    return digests


class Cut(Exception):
    """SIGTERM / Ctrl-C: stop the running measurement and write what was measured."""


def _cut(signum, frame):
    raise Cut(signal.Signals(signum).name)


def measure(args, label: str, source: Path, rows: int, processes: int, key_file: str | None) -> dict:
    """Protect `source` with `processes` ranks; wall time, every rank's report and rank 0's per-shard samples."""
    output = args.work_dir / f"release-{label}-p{processes}"
    for path in (output, output.parent / f"{output.name}.private", output.parent / f"{output.name}.uge-work"):
        shutil.rmtree(path, ignore_errors=True)  # a fresh run, not a resumed one
    traces = [args.work_dir / f"trace-{label}-p{processes}-rank{rank}.jsonl" for rank in range(processes)]
    for trace in traces:
        trace.unlink(missing_ok=True)
    run = {"rows": rows, "method": args.method, "shard_rows": args.shard_rows, "processes": processes}
    children, start = [], time.perf_counter()
    try:
        for rank in range(processes):
            env = {**os.environ, **({"RANK": str(rank), "WORLD_SIZE": str(processes)} if processes > 1 else {})}
            command = [sys.executable, __file__, "--child", str(source), "--method", args.method, "--output",
                       str(output), "--trace", str(traces[rank]),
                       *(["--shard-rows", str(args.shard_rows)] if args.shard_rows else []),
                       *(["--key-file", key_file] if key_file else []), *(["--streaming"] if args.streaming else [])]
            children.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
        outputs = [c.communicate() for c in children]
    except Cut as e:
        for c in children:
            c.terminate()
        for c in children:
            c.wait()
        run["cut"] = f"stopped by {e} after {time.perf_counter() - start:.0f} s"
        outputs = None
    run["wall_s"] = round(time.perf_counter() - start, 1)
    run["per_shard"] = [json.loads(line) for line in traces[0].read_text().splitlines()] if traces[0].exists() else []
    if outputs is None:
        return run
    if any(c.returncode < 0 for c in children):  # killed by a signal: SIGKILL here is the out-of-memory killer
        run["skipped"] = f"killed by signal(s) {[-c.returncode for c in children]} (9: out of memory) while protecting"
        return run
    failed = [err[-3000:] for c, (_, err) in zip(children, outputs) if c.returncode != 0]
    if failed:
        raise SystemExit(f"the run of {label} with {processes} process(es) failed:\n{failed[0]}")
    run["ranks"] = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    run["img_per_s"] = round(rows / run["wall_s"], 1)
    apply_rows = sum(r["apply_rows"] for r in run["ranks"])
    apply_seconds = max(r["apply_seconds"] for r in run["ranks"])
    run["apply_img_per_s"] = round(apply_rows / apply_seconds) if apply_seconds else None
    run["output"] = str(output)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--source", type=Path, help="a dataset folder to protect (every row) instead of synthetic sets")
    parser.add_argument("--method", default="keyed", choices=["keyed", "lock"])
    parser.add_argument("--processes", type=int, nargs="+", default=[1],
                        help="process counts (RANK / WORLD_SIZE ranks) to run each dataset with")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/uge-scale"))
    parser.add_argument("--results-dir", type=Path, default=HERE / "results")
    parser.add_argument("--name", help="results file name (default scale_METHOD_SIZEpx[_shardsN])")
    parser.add_argument("--shard-rows", type=int, help="the shard-by-shard writer, this many rows per shard;"
                        " default: the in-memory writer")
    parser.add_argument("--streaming", action="store_true", help="read the source as a stream (protect(streaming=True):"
                        " load_dataset(..., streaming=True)); needs --shard-rows")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--trace", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--key-file", help=argparse.SUPPRESS)
    parser.add_argument("--make-source", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("UGE_HF_NO_PROGRESS", "1")
    args.work_dir = args.work_dir.resolve()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    if args.make_source is not None:
        import datasets.utils

        datasets.utils.disable_progress_bars()
        synthetic_source(args.work_dir / f"source-{args.make_source}-{args.size}", args.make_source, args.size)
        return
    if args.child is not None:
        print(json.dumps(child(args.child, args.method, args.output, args.shard_rows, args.key_file, args.trace,
                               args.streaming)))
        return

    command = "OMP_NUM_THREADS={} python benchmarks/scale.py {}".format(
        os.environ.get("OMP_NUM_THREADS", "(unset)"), shlex.join(sys.argv[1:]))
    name = args.name or (f"scale_{args.method}_{args.size}px" + (f"_shards{args.shard_rows}" if args.shard_rows else "")
                         + ("_streaming" if args.streaming else ""))
    signal.signal(signal.SIGTERM, _cut)
    signal.signal(signal.SIGINT, _cut)
    if args.source is not None:
        datasets_ = [(args.source.name, args.source.resolve(), None)]
    else:
        datasets_ = [(f"{rows}-{args.size}", args.work_dir / f"source-{rows}-{args.size}", rows) for rows in args.rows]
    runs, comparisons = [], []
    try:
        for label, source, rows in datasets_:
            if rows is not None:
                need, have = estimated_gib(min(rows, args.shard_rows or rows), args.size), available_gib()
                if need > 0.8 * have:
                    runs.append({"rows": rows, "method": args.method, "skipped":
                                 f"protect() estimates ~{need:.0f} GiB for the in-memory writer, {have:.0f} GiB available"})
                    continue
                subprocess.run([sys.executable, __file__, "--make-source", str(rows), "--size", str(args.size),
                                "--work-dir", str(args.work_dir)], check=True)
            else:
                from datasets import load_dataset

                rows = load_dataset(str(source), split="train").num_rows  # the protected split (the default)
            first = None
            for processes in args.processes:
                key = str(Path(first["output"] + ".private") / "key.json") if first else None
                run = measure(args, label, source, rows, processes, key)
                runs.append(run)
                _write(args, name, command, runs, comparisons)
                if "cut" in run or "ranks" not in run:
                    raise Cut("a run that did not finish")
                if first is None:
                    first = run
                else:
                    same = folder_digest(Path(first["output"])) == folder_digest(Path(run["output"]))
                    comparisons.append({"dataset": label, "processes": [first["processes"], processes],
                                        "release_bytes_identical": same})
                    shutil.rmtree(run["output"], ignore_errors=True)
                    shutil.rmtree(run["output"] + ".private", ignore_errors=True)
            if first is not None:
                shutil.rmtree(first["output"], ignore_errors=True)
                shutil.rmtree(first["output"] + ".private", ignore_errors=True)
    except Cut:
        pass
    _write(args, name, command, runs, comparisons)
    print((args.results_dir / f"{name}.md").read_text())


def _commit() -> str | None:
    """The measured checkout's git commit (None outside a git checkout: set UGE_HF_COMMIT)."""
    done = subprocess.run(["git", "-C", str(HERE), "rev-parse", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or None


def _write(args, name: str, command: str, runs: list[dict], comparisons: list[dict]) -> None:
    """benchmarks/results/NAME.{json,md}: every run (finished, cut or skipped) as measured."""
    measured = [r for r in runs if "ranks" in r and r["processes"] == args.processes[0]]
    anonymous = [max(k["peak_anonymous_mib"] for k in r["ranks"]) for r in measured]
    peak = [max(k["peak_rss_mib"] for k in r["ranks"]) for r in measured]
    payload = {"command": command, "code": os.environ.get("UGE_HF_COMMIT") or _commit(), "runs": runs, "comparisons": comparisons,
               "peak_rss_growth": round(peak[-1] / peak[0], 2) if len(measured) > 1 else None,
               "peak_anonymous_growth": round(anonymous[-1] / anonymous[0], 2) if len(measured) > 1 else None,
               "cpus": os.cpu_count(), "machine": platform.platform(), "python": platform.python_version()}
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    what = f"{args.source.name}" if args.source else f"{args.size}x{args.size} synthetic images"
    writer = f"shard by shard, {args.shard_rows} rows per shard" if args.shard_rows else "each split in memory"
    writer += ", source read as a stream" if args.streaming else ""
    lines = [f"# protect() at scale: {args.method}, {what}, {writer}", "", f"Command: `{command}` (code: {payload['code']})", "",
             "| rows | processes | wall s | img/s | apply img/s | peak RSS per process (MiB) | peak anonymous RSS"
             " per process (MiB) |", "|---|---|---|---|---|---|---|"]
    for r in runs:
        if "ranks" in r:
            lines.append(f"| {r['rows']} | {r['processes']} | {r['wall_s']} | {r['img_per_s']} | {r['apply_img_per_s']} | "
                         + ", ".join(str(k["peak_rss_mib"]) for k in r["ranks"]) + " | "
                         + ", ".join(str(k["peak_anonymous_mib"]) for k in r["ranks"]) + " |")
        else:
            lines.append(f"| {r['rows']} | {r.get('processes', '')} | {r.get('wall_s', '')} | "
                         f"{r.get('cut') or r.get('skipped')} | | | |")
    for c in comparisons:
        lines.append(f"\n{c['dataset']}: the {c['processes'][1]}-process release is byte for byte the"
                     f" {c['processes'][0]}-process one (same key, every file): {c['release_bytes_identical']}.")
    if payload["peak_rss_growth"] is not None:
        lines += ["", f"Growth, largest / smallest finished run: peak RSS x{payload['peak_rss_growth']}, peak anonymous"
                      f" RSS x{payload['peak_anonymous_growth']} (target <= 1.5 for 10x rows). Peak RSS also counts"
                      " the pages of the memory-mapped Arrow files that were read (page cache); anonymous RSS is what"
                      " the process holds."]
    for r in runs:
        if r.get("per_shard"):
            lines += ["", f"RSS of rank 0 as each shard finished ({r['rows']} rows, {r['processes']} process(es)"
                          f"{', CUT: ' + r['cut'] if 'cut' in r else ''}):", "",
                      "| shards done | seconds | RSS (MiB) | anonymous RSS (MiB) | file-backed RSS (MiB) |"
                      " peak RSS so far (MiB) |", "|---|---|---|---|---|---|"]
            lines += [f"| {s['shards_done']} | {s['seconds']} | {s['rss_mib']} | {s['anonymous_mib']} |"
                      f" {s.get('file_mib', '')} | {s['peak_rss_mib']} |" for s in r["per_shard"]]
    (args.results_dir / f"{name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
