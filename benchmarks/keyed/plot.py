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
            key_cost[match.groups()] = clean["resnet18-w16-seed1"] - r["keyed-resnet18-w16-seed0"]
    figure, axes = plt.subplots(figsize=(6, 4))
    for r in records:
        match = re.fullmatch(r"(t\d+g\d+(?:r\d+)?)-.*", r["variant"])
        measured = [h for h in HACKERS if h in r]
        if not match or not measured:
            continue
        worst = max(r[h] / clean[h] for h in measured)
        cost = key_cost.get(match.groups())
        axes.scatter(cost if cost is not None else 0, worst, label=f"{r['variant']} ({', '.join(h.split('-')[0] for h in measured)})")
    axes.axhline(0.3, ls="--", c="grey", lw=0.8)
    axes.set_xlabel("key stage cost on clean data (points; 0 where not measured)")
    axes.set_ylabel("worst hacker: protected / clean accuracy")
    axes.set_title("keyed designs, validation slice, one seed")
    axes.legend(fontsize=6)
    figure.tight_layout()
    figure.savefig(RESULTS / "keyed_tradeoff.png", dpi=120)


if __name__ == "__main__":
    main()
