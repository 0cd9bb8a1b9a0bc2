"""Draws docs/img/roofline_ulx3s-sdram.png: MiniLM layer 0's linears, 90 % sparse, on the roofline.

Run from anywhere: ``python docs/img/draw_roofline.py [PRESET]`` (default ``ulx3s-sdram``); it
prints each layer's memory report and writes ``roofline_<preset>.png`` beside itself. Every
layer is magnitude-pruned to 90 % on its own and quantised as ``sparsemac simulate`` does, with
the built-in 16-token sentence.
"""

import sys
from pathlib import Path

from sparsemac.hw.config import DEFAULT_CONFIG
from sparsemac.sw.csr import CSRMatrix
from sparsemac.sw.memory import memory_preset
from sparsemac.sw.memory_report import memory_report, plot_roofline
from sparsemac.sw.models import capture_linear_input, get_linear, load_model
from sparsemac.sw.pruning import prune_mask
from sparsemac.sw.quantisation import quantise_weights
from sparsemac.sw.tables import format_sections

LAYERS = ("attention.self.query", "attention.output.dense", "intermediate.dense",
          "output.dense")


def main(preset="ulx3s-sdram"):
    memory = memory_preset(preset)
    loaded = load_model("minilm", seed=0)
    reports = []
    for name in LAYERS:
        qualified = f"encoder.layer.0.{name}"
        weight = get_linear(loaded.model, qualified).weight.detach().float()
        mask = prune_mask(weight, 0.9, "magnitude", seed=0)
        weights = CSRMatrix.from_dense(quantise_weights(weight * mask).values)
        tokens = capture_linear_input(loaded, qualified).shape[0]
        report = memory_report(weights, tokens, DEFAULT_CONFIG, memory, layer=name)
        print(format_sections(report.sections()), end="\n\n")
        reports.append(report)
    output = Path(__file__).with_name(f"roofline_{preset.replace(',', '_')}.png")
    plot_roofline(reports, output)
    print(f"wrote {output}")


if __name__ == "__main__":
    main(*sys.argv[1:])
