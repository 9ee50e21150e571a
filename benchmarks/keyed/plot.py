"""The trade-off of the keyed designs measured by sweep.py: key-stage cost vs the worst hacker's ratio.

    python benchmarks/keyed/plot.py      # reads benchmarks/results/keyed_sweep.jsonl, writes keyed_tradeoff.png

x: points the authorized network loses to its key stage on clean data (resnet18-w16-seed0 behind the design's key
stage, `clean-tTgG` rows, vs the plain resnet18-w16-seed1 on clean data: the same architecture; the release itself
costs nothing more, by construction). y: the largest protected / clean accuracy ratio over the hackers measured.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results"
HACKERS = ["cnn-w16-seed1", "resnet18-w16-seed1"]


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in (RESULTS / "keyed_sweep.jsonl").read_text().splitlines() if line.strip()]
    clean = next(r for r in records if r["variant"] == "clean")
    key_cost = {}
    for r in records:
        match = re.fullmatch(r"clean-(t\d+g\d+(?:r\d+)?)", r["variant"])
        if match and "keyed-resnet18-w16-seed0" in r:
            key_cost[match.group(1)] = clean["resnet18-w16-seed1"] - r["keyed-resnet18-w16-seed0"]
    merged: dict[str, dict] = {}  # a variant measured in several runs (one hacker each): one point
    for r in records:
        merged.setdefault(r["variant"], {}).update({h: r[h] for h in HACKERS if h in r})
    figure, axes = plt.subplots(figsize=(6, 4))
    for variant, values in merged.items():
        match = re.fullmatch(r"(t\d+g\d+(?:r\d+)?)-.*", variant)
        if not match or not values:
            continue
        worst = max(values[h] / clean[h] for h in values)
        cost = key_cost.get(match.group(1))
        hackers = ", ".join(h.split("-")[0] for h in values)
        axes.scatter(cost if cost is not None else 0, worst, facecolors=None if cost is not None else "none",
                     edgecolors="C0" if cost is None else None,
                     label=f"{variant} ({hackers}){'' if cost is not None else '; key cost not measured: at 0'}")
    axes.axhline(0.3, ls="--", c="grey", lw=0.8)
    axes.set_xlabel("key stage cost on clean data (points; hollow: not measured)")
    axes.set_ylabel("worst hacker: protected / clean accuracy")
    axes.set_title("keyed designs, validation slice, one seed")
    axes.legend(fontsize=6)
    figure.tight_layout()
    figure.savefig(RESULTS / "keyed_tradeoff.png", dpi=120)


if __name__ == "__main__":
    main()
