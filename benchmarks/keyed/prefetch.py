"""A second process for the keyed or lock CPU protocol on a 2-core machine: trains part of its networks into the cache.

    python benchmarks/cifar10_cpu.py --method keyed &      # the protocol itself: protects, trains, writes results
    python benchmarks/keyed/prefetch.py                    # at the same time: attacks, Wrong/No key, ResNet-18 seed 1
    python benchmarks/keyed/prefetch.py --method lock --poison adversarial   # the same for a lock protocol run

`run_protocol` trains its networks one after another; this script trains, in another process and through the same
code path (so the cache keys are the same), the networks the protocol reaches last. Whatever it finishes first,
the protocol loads from the cache instead of training it. It reports nothing itself: every number comes from the
protocol's own run. Set OMP_NUM_THREADS=1 for both processes (two single-threaded trainings beat two that fight).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from cifar10_cpu import DEFAULT_HACKERS, keyed_protocol, lock_protocol  # noqa: E402
from protocol import load_rows, release_evaluation  # noqa: E402

from uge_hf.evaluate import EvaluateConfig, Trainer, load_evaluation_data, run_protocol  # noqa: E402
from uge_hf.private import private_dir_for  # noqa: E402


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", choices=["keyed", "lock"], default="keyed")
    parser.add_argument("--poison", help="the lock method's poison, as given to cifar10_cpu.py")
    args = parser.parse_args()
    work_dir = HERE.parent / ".work"
    source = str(HERE.parents[1].parent / "shared" / "data" / "cifar10")
    protocol = keyed_protocol(source, DEFAULT_HACKERS) if args.method == "keyed" else \
        lock_protocol(source, DEFAULT_HACKERS, lock={"poison": args.poison} if args.poison else None)
    release = work_dir / f"{protocol.name}-release"
    while not (release / "README.md").exists() or not private_dir_for(release).is_dir():
        time.sleep(5)  # the protocol's own process writes the release first
    time.sleep(5)
    data = load_rows(protocol)
    private = private_dir_for(release)
    evaluation = load_evaluation_data(release, data, release_evaluation(protocol),
                                      **{"authorized_weights" if args.method == "keyed" else "key": private})
    hackers_only = dataclasses.replace(evaluation, authorized=[], input_stages={}, authorized_networks={}, extra_networks=[])
    trainer = Trainer(work_dir / "trained", "cpu")
    cheap = ["lenet-seed1"]  # run_protocol needs one hacker; LeNet trains in a minute and the protocol needs it anyway
    run_protocol(hackers_only, EvaluateConfig(hackers=cheap, distill=False, attacks=protocol.attacks,
                                              attack_hackers=protocol.attack_hackers), trainer)
    run_protocol(dataclasses.replace(hackers_only, extra_networks=evaluation.extra_networks),
                 EvaluateConfig(hackers=cheap, distill=False), trainer)
    run_protocol(hackers_only, EvaluateConfig(hackers=["resnet18-w16-seed1"], distill=False), trainer)


if __name__ == "__main__":
    main()
