"""Draws docs/img/architecture.png, the block diagram of SparseMACCore.

Run from anywhere: ``python docs/img/draw_architecture.py``; it writes the picture beside itself.
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle  # noqa: E402

OUTPUT = Path(__file__).with_name("architecture.png")

BLOCK = "#dbe8f6"
PART = "#ffffff"
CONTROL = "#f6ecd6"


def box(ax, x, y, width, height, title, colour=BLOCK, style="round,pad=0.02", size=11,
        weight="bold", title_at="top", **kwargs):
    ax.add_patch(FancyBboxPatch((x, y), width, height, boxstyle=style, facecolor=colour,
                                edgecolor="black", linewidth=1.2, **kwargs))
    ty = y + height - 0.25 if title_at == "top" else y + height / 2
    ax.text(x + width / 2, ty, title, ha="center", va="center", fontsize=size,
            fontweight=weight)


def arrow(ax, start, end, label=None, offset=(0, 0.18), colour="black", style="-|>",
          linestyle="-"):
    # Drawn above the boxes so that no box hides an arrowhead.
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=14, zorder=3,
                                 linewidth=1.4, color=colour, linestyle=linestyle))
    if label:
        x, y = (start[0] + end[0]) / 2 + offset[0], (start[1] + end[1]) / 2 + offset[1]
        ax.text(x, y, label, ha="center", va="center", fontsize=9, family="monospace")


def main():
    fig, ax = plt.subplots(figsize=(14, 7.2))
    ax.set_xlim(0, 14)
    ax.set_ylim(0, 7.2)
    ax.axis("off")

    # The core around everything.
    box(ax, 1.7, 0.35, 11.0, 6.5, "", colour="none", style="square,pad=0", linestyle="--")
    ax.text(1.85, 6.62, "SparseMACCore", fontsize=13, fontweight="bold", va="center")

    # Control: job / done handshake and the cycle counter.
    box(ax, 8.1, 5.55, 3.9, 1.0, "job FSM: Idle > Busy > Report\n48-bit cycle counter",
        colour=CONTROL, size=9.5, weight="normal", title_at="middle")
    arrow(ax, (13.3, 6.3), (12.0, 6.3))
    ax.text(13.4, 6.3, "job", fontsize=9, family="monospace", va="center")
    arrow(ax, (12.0, 5.8), (13.3, 5.8))
    ax.text(13.4, 5.8, "done\n(cycles)", fontsize=9, family="monospace", va="center")
    arrow(ax, (8.1, 6.05), (4.3, 5.42), "start, job", offset=(0.4, 0.3))
    arrow(ax, (8.1, 5.75), (6.6, 3.32), "start, job", offset=(-0.6, 0.0))

    # CSR weight streamer.
    box(ax, 2.2, 3.9, 3.4, 1.5, "CSRWeightStreamer")
    ax.text(3.9, 4.45, "ring of 3K+ entries\nrealigns words to rows",
            ha="center", va="center", fontsize=9)
    for y, name in ((5.1, "row_pointers"), (4.65, "columns"), (4.2, "values")):
        arrow(ax, (0.2, y), (2.2, y))
        ax.text(0.25, y + 0.14, name, fontsize=9, family="monospace")

    # Activation buffer: K replicas of two banks.
    box(ax, 4.1, 0.7, 3.7, 2.6, "ActivationBuffer")
    for lane in range(4):
        x = 4.35 + lane * 0.85
        label = "K-1" if lane == 3 else str(lane)
        ax.text(x + 0.35, 2.72, f"replica {label}", ha="center", fontsize=7.5)
        for bank in range(2):
            ax.add_patch(Rectangle((x, 1.55 + bank * 0.5), 0.7, 0.42, facecolor=PART,
                                   edgecolor="black", linewidth=0.8))
            ax.text(x + 0.35, 1.76 + bank * 0.5, f"bank {bank}", ha="center", va="center",
                    fontsize=7)
    ax.text(6.45 - 0.45, 1.2, "each bank: max_in_features x T int8", ha="center", fontsize=8)
    ax.text(6.0, 0.9, "fill writes all replicas; lane k reads column k", ha="center", fontsize=8)
    arrow(ax, (0.2, 1.4), (4.1, 1.4))
    ax.text(0.25, 1.54, "activations", fontsize=9, family="monospace")
    arrow(ax, (3.9, 3.9), (5.0, 3.3), "chunks", offset=(-0.6, -0.05))

    # MAC array.
    box(ax, 8.4, 0.7, 3.6, 4.3, "MACArray")
    parts = ("K x T int8 multipliers", "T adder trees (K inputs)", "T int32 accumulators\n(wrap)")
    for index, text in enumerate(parts):
        y = 3.6 - index * 1.15
        box(ax, 8.7, y, 3.0, 0.8, text, colour=PART, size=9, weight="normal",
            title_at="middle")
        if index:
            arrow(ax, (10.2, y + 1.15), (10.2, y + 0.8))
    arrow(ax, (7.8, 2.0), (8.4, 2.0))
    ax.text(8.1, 2.75, "operands", ha="center", va="center", fontsize=9, rotation=90,
            family="monospace")
    arrow(ax, (12.0, 1.5), (13.5, 1.5))
    ax.text(12.95, 1.65, "sums", fontsize=9, family="monospace")
    arrow(ax, (12.15, 1.5), (12.15, 5.52), linestyle="--")
    ax.text(12.22, 3.5, "sums handshakes\ncount the rows", fontsize=8, rotation=90,
            va="center")

    fig.tight_layout()
    fig.savefig(OUTPUT, dpi=110)
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
