"""CPU-scale UGE protocol on CIFAR-10 (issue #3): runnable on 2 cores.

    python benchmarks/cifar10_cpu.py [--source ../shared/data/cifar10] [--solver generator|per-sample|hybrid|replay]
    python benchmarks/cifar10_cpu.py --ablation unlearn|undistill|without-ud [--solver ...]
    python benchmarks/cifar10_cpu.py --validation [--solver ...]      # for choosing settings: no test rows
    python benchmarks/cifar10_cpu.py --method keyed                  # the keyed method, with issue 11's attacks
    python benchmarks/cifar10_cpu.py --method lock [--poison NAME]   # the lock method, with issue 15's targets

First 10,000 train rows and first 2,000 test rows; authorized resnet18-w16-seed0; surrogate encoder; rho 0.04;
hackers Normal + Distill; a same-rho uniform-noise baseline (authorized + CNN). Writes
benchmarks/results/cifar10_cpu.{json,md}. Trained networks are cached under --work-dir, so a second run retrains
only what depends on the release. An ablation (the paper's Unlearn = L_fd only, UnDistill = L_ud only, UGE w/o UD)
turns loss terms off and, to fit the machine, evaluates the authorized net and two hackers (the CNN, Normal and
Distill, and ResNet-18 with another seed) unless --hacker says otherwise. `python benchmarks/summary.py` gathers
every variant's results into one table. --validation (with the same flags) protects the first 5,000 train rows and
measures on train rows 8,000-9,999 instead of the test rows (results `cifar10_val*`): where settings are chosen.

Deviation from the paper's backbones, for CPU time: the hackers use reduced widths where the default width would
not train in minutes on 2 cores (the spec in the table says which); the GPU protocol uses the default widths.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from protocol import ABLATIONS, Protocol, run, variant_name, variant_settings
from uge_hf.config import METHODS, SOLVERS, SURROGATE_POISONS

HERE = Path(__file__).resolve().parent
EPOCHS = 15  # 10k rows: ResNet-18 w16 reaches its plateau on clean data in about this many cosine epochs


DEFAULT_HACKERS = ["cnn-w16-seed1", "lenet-seed1", "mobilenetv2-w8-seed1", "shufflenetv2-w12-seed1", "resnet18-w16-seed1"]
ABLATION_HACKERS = ["cnn-w16-seed1", "resnet18-w16-seed1"]  # another architecture and another seed of the authorized one


# Issue 11's targets for the keyed method (ratios of protected to clean accuracy per scheme; authorized within 1 point).
KEYED_TARGETS = {"Normal": 0.3, "No key": 0.3, "Distill": 0.35, "Wrong key": 0.35, "Peak epoch": 0.4,
                 "grayscale": 0.6, "linear-projection": 0.6, "jpeg10": 0.75}
KEYED_ATTACKS = ["grayscale", "jpeg10", "linear-projection"]


def keyed_protocol(source: str, hackers: list[str], validation: bool = False, keyed: dict | None = None) -> Protocol:
    """The CPU protocol for the keyed method (no network trained to protect; the attacks of issue 11 evaluated)."""
    return _model_free_protocol("keyed", "keyed", keyed, source, hackers, validation, KEYED_TARGETS,
                                authorized_margin_points=1.0, key_cost_points=2.0)


# Issue 15's targets for the lock method (the authorized party trains on the unlocked, i.e. the clean, images).
LOCK_TARGETS = {"Normal": 0.3, "No key": 0.3, "Distill": 0.35, "Wrong key": 0.35,
                "grayscale": 0.6, "linear-projection": 0.6, "jpeg10": 0.75}


def lock_protocol(source: str, hackers: list[str], validation: bool = False, lock: dict | None = None) -> Protocol:
    """The CPU protocol for the lock method (a model-free poison; the key holder unlocks the exact images)."""
    name = "lock" + (f"-{lock['poison']}" if lock and lock.get("poison") else "")
    # the 2-minute protect target is the for model-free poisons; a surrogate poison trains a network first
    limits = {} if lock and lock.get("poison") in SURROGATE_POISONS else {"protect": 2}
    # unlocked images are the clean ones: the authorized row must not move at all
    return _model_free_protocol("lock", name, lock, source, hackers, validation, LOCK_TARGETS, limits,
                                authorized_margin_points=0.0)


def _model_free_protocol(method: str, name: str, settings: dict | None, source: str, hackers: list[str],
                         validation: bool, targets: dict, limits_minutes: dict | None = None, **checks) -> Protocol:
    """The protocol of a method that trains no network to protect: `settings` is its own config block."""
    return Protocol(
        name=f"cifar10_{'val' if validation else 'cpu'}_{name}",
        source=source,
        train_rows=5_000 if validation else 10_000,
        test_rows=2_000,
        validation_start=8_000 if validation else None,
        protect={"method": method, "authorized": ["resnet18-w16-seed0"], "rho": 0.04,
                 "recipe": {"epochs": EPOCHS, "batch_size": 128}, method: settings or {}},
        hackers=hackers,
        distill_students=["cnn-w16-seed1"],
        noise_baseline=False,  # the signal is a shortcut by design; same-rho noise is the paper's control
        limits_minutes={"protect": 2} if limits_minutes is None else limits_minutes,
        attacks=KEYED_ATTACKS,
        attack_hackers=["cnn-w16-seed1"],
        ratio_targets=targets,
        **checks,
    )


def cpu_protocol(source: str, solver: str, hackers: list[str], ablation: str | None = None, validation: bool = False) -> Protocol:
    """The CPU protocol; `validation` protects the first 5,000 train rows and measures on train rows 8,000-9,999."""
    return Protocol(
        name=variant_name("cifar10_val" if validation else "cifar10_cpu", solver, ablation),
        source=source,
        train_rows=5_000 if validation else 10_000,
        test_rows=2_000,
        validation_start=8_000 if validation else None,
        protect=dict(
            method="gradient-matching", authorized=["resnet18-w16-seed0"], encoder="surrogate", rho=0.04, seed=0, solver=solver,
            recipe={"epochs": EPOCHS, "batch_size": 128}, generator_epochs=3, batch_size=128,
            generator_channels=16, generator_blocks=2, surrogate_epochs=10, per_sample_steps=5,
            **variant_settings(solver, ablation),
        ),
        hackers=hackers,
        distill_students=["cnn-w16-seed1"],
        noise_networks=["cnn-w16-seed1"],
        limits_minutes={"protect": 20, "run": 45},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default=str(HERE.parent.parent / "shared" / "data" / "cifar10"))
    parser.add_argument("--method", default="gradient-matching", choices=METHODS)
    parser.add_argument("--solver", default="generator", choices=SOLVERS, help="the gradient-matching method's solver")
    parser.add_argument("--ablation", choices=sorted(ABLATIONS), help="turn loss terms off (the paper's ablation rows)")
    parser.add_argument("--validation", action="store_true",
                        help="choose settings here: 5,000 rows protected, measured on train rows 8,000-9,999, not the test rows")
    parser.add_argument("--work-dir", type=Path, default=HERE / ".work")
    parser.add_argument("--fresh", action="store_true", help="re-run the protection even if the release is current")
    parser.add_argument("--reuse-release", action="store_true",
                        help="evaluate the release in --work-dir as it is, even if this code's config defaults changed since")
    parser.add_argument("--poison", help="the lock method's poison (default: the config's)")
    parser.add_argument("--hacker", action="append", help="hacker spec (repeatable); default: " + " ".join(DEFAULT_HACKERS)
                        + " (with --ablation: " + " ".join(ABLATION_HACKERS) + ")")
    args = parser.parse_args()
    hackers = args.hacker or (ABLATION_HACKERS if args.ablation or args.validation else DEFAULT_HACKERS)
    if args.method == "keyed":
        protocol = keyed_protocol(args.source, args.hacker or DEFAULT_HACKERS, args.validation)
    elif args.method == "lock":
        protocol = lock_protocol(args.source, args.hacker or DEFAULT_HACKERS, args.validation,
                                 {"poison": args.poison} if args.poison else None)
    else:
        protocol = cpu_protocol(args.source, args.solver, hackers, args.ablation, args.validation)
    payload = run(protocol, args.work_dir, HERE / "results", fresh=args.fresh, reuse_release=args.reuse_release)
    print((HERE / "results" / f"{payload['protocol']['name']}.md").read_text())


if __name__ == "__main__":
    main()
