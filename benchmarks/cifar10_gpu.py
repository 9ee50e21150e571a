"""Paper-scale UGE protocol on CIFAR-10 (issue #3), for a GPU.

    python benchmarks/cifar10_gpu.py --source PATH_TO_CIFAR10 [--encoder openai/clip-vit-base-patch32|LOCAL_CLIP]
    python benchmarks/cifar10_gpu.py --smoke --source examples/cifar10-sample     # ~1 minute on a CPU, tested
    python benchmarks/cifar10_gpu.py --ablation unlearn|undistill|without-ud ...   # the paper's ablation rows

Full CIFAR-10 (50k/10k), authorized CIFAR ResNet-18 width 64 seed 0, CLIP ViT-B/32, rho 0.04, the paper's hackers
at their default widths, Normal + Distill, uniform-noise baseline. Writes benchmarks/results/cifar10_gpu.{json,md}
(or cifar10_gpu_smoke.* with --smoke; the solver and ablation, when not the default, are added to the name).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from protocol import ABLATIONS, Protocol, run, variant_name, variant_settings
from uge_hf.config import SOLVERS

HERE = Path(__file__).resolve().parent


def gpu_protocol(source: str, encoder: str, solver: str, ablation: str | None) -> Protocol:
    return Protocol(
        name=variant_name("cifar10_gpu", solver, ablation),
        source=source,
        train_rows=50_000,
        test_rows=10_000,
        protect=dict(method="gradient-matching", authorized=["resnet18-seed0"], encoder=encoder, rho=0.04, seed=0, solver=solver,
                     recipe={"epochs": 30, "batch_size": 128}, generator_epochs=20, batch_size=128,
                     **variant_settings(solver, ablation)),
        hackers=["cnn-seed1", "lenet-seed1", "mobilenetv2-seed1", "shufflenetv2-seed1", "resnet18-seed1"],
        distill_students=["cnn-seed1"],
        noise_networks=["cnn-seed1"],
    )


def smoke_protocol(source: str, solver: str, ablation: str | None) -> Protocol:
    """Every phase of the GPU protocol on a few rows and tiny networks: proves the script runs end to end."""
    return Protocol(
        name=variant_name("cifar10_gpu_smoke", solver, ablation),
        source=source,
        train_rows=64,
        test_rows=32,
        protect=dict(method="gradient-matching", authorized=["resnet18-w4-seed0"], encoder="surrogate", rho=0.04, seed=0, solver=solver,
                     recipe={"epochs": 1, "batch_size": 32}, generator_epochs=1, batch_size=32, generator_channels=4,
                     generator_blocks=1, surrogate_epochs=1, undistill_hacker="lenet-w2-seed1", per_sample_steps=1,
                     **variant_settings(solver, ablation)),
        hackers=["lenet-w2-seed1", "resnet18-w4-seed1"],
        distill_students=["lenet-w2-seed1"],
        noise_networks=["lenet-w2-seed1"],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default=str(HERE.parent.parent / "shared" / "data" / "cifar10"))
    parser.add_argument("--encoder", default="openai/clip-vit-base-patch32")
    parser.add_argument("--solver", default="generator", choices=SOLVERS)
    parser.add_argument("--ablation", choices=sorted(ABLATIONS), help="turn loss terms off (the paper's ablation rows)")
    parser.add_argument("--smoke", action="store_true", help="a one-minute CPU run of every phase")
    parser.add_argument("--work-dir", type=Path, default=HERE / ".work")
    parser.add_argument("--results-dir", type=Path, default=HERE / "results")
    args = parser.parse_args()
    protocol = (smoke_protocol(args.source, args.solver, args.ablation) if args.smoke
                else gpu_protocol(args.source, args.encoder, args.solver, args.ablation))
    payload = run(protocol, args.work_dir, args.results_dir, fresh=True)
    print((args.results_dir / f"{payload['protocol']['name']}.md").read_text())


if __name__ == "__main__":
    main()
