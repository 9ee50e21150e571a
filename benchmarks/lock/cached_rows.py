"""The rows of a lock CPU-protocol run that its trained-network cache already holds, when the run was cut short.

    python benchmarks/lock/cached_rows.py --poison texture-grey-apart [--hacker SPEC ...]

Evaluates the release `benchmarks/.work/cifar10_cpu_lock-POISON-release` like `cifar10_cpu.py --method lock` does,
but only the authorized row and Normal hackers (no Distill, attacks or wrong key), with the same trained-network
cache: networks the cut run finished are loaded, not retrained (a network it did not finish would be trained now).
Writes benchmarks/results/cifar10_cpu_lock-POISON-partial.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from cifar10_cpu import lock_protocol  # noqa: E402
from protocol import load_rows  # noqa: E402

from uge_hf.evaluate import EvaluateConfig, Trainer, load_evaluation_data, markdown_table, run_protocol  # noqa: E402
from uge_hf.private import private_dir_for  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--poison", required=True)
    parser.add_argument("--hacker", action="append")
    parser.add_argument("--source", default=str(HERE.parents[1].parent / "shared" / "data" / "cifar10"))
    args = parser.parse_args()
    hackers = args.hacker or ["cnn-w16-seed1", "lenet-seed1", "resnet18-w16-seed1"]
    protocol = lock_protocol(args.source, hackers, lock={"poison": args.poison})
    work = HERE.parent / ".work"
    release = work / f"{protocol.name}-release"
    config = EvaluateConfig(hackers=hackers, distill=False, attacks=[], wrong_key=False)
    data = load_evaluation_data(release, load_rows(protocol), config, key=private_dir_for(release))
    trainer = Trainer(work / "trained")
    rows = run_protocol(data, config, trainer)
    text = (f"# {protocol.name}: the rows its cache held (run cut by the session's time)\n\n"
            f"`python benchmarks/lock/cached_rows.py --poison {args.poison}`; networks loaded from the cache:"
            f" {trainer.loaded_from_cache}. 10,000 train rows, 2,000 test rows, 15 epochs, one seed.\n\n"
            + markdown_table(rows) + "\n")
    out = HERE.parent / "results" / f"{protocol.name}-partial.md"
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
