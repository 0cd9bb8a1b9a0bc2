"""``sparsemac simulate``: one pruned BERT layer on a simulated array, sparse against dense.

The layer's real weights are pruned and quantised, a real sentence's activations are captured
at its input, and the same device runs the product twice: in sparse (CSR) mode and in the dense
baseline mode. Both int32 results are checked bit for bit against the golden model and both
cycle counts against the cycle model.

Exit status: 0 when both runs are bit-exact and match the cycle model, 1 when not, 2 when the
input is wrong (unknown layer, layer too wide for the array, bad sparsity ...).
"""

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass

from ...hw.config import DEFAULT_CONFIG

__all__ = ["HELP", "add_arguments", "run", "SimulationReport", "simulate", "format_table",
           "format_sections", "progress"]

HELP = ("run one pruned layer of a BERT on a simulated array: cycles, speedup over the dense "
        "baseline, bit-exactness")

DEFAULT_MODEL = "minilm"
DEFAULT_LAYER = "encoder.layer.0.intermediate.dense"
DEFAULT_SPARSITY = 0.9
BACKENDS = ("verilator", "reference", "amaranth", "fpga")


def _fraction(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"sparsity must be a number from 0 to 1, not {text!r}")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"sparsity must be from 0 to 1, not {value!r}")
    return value


def add_arguments(parser):
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="minilm (packaged, real weights), bert-base (seeded random weights) "
                             "or a local checkpoint directory (default: %(default)s)")
    parser.add_argument("--layer", default=DEFAULT_LAYER,
                        help="qualified name of the linear to run (default: %(default)s)")
    parser.add_argument("--sparsity", type=_fraction, default=DEFAULT_SPARSITY,
                        help="fraction of weights to prune, 0 to 1 (default: %(default)s; "
                             "ignored by N:M methods)")
    parser.add_argument("--method", default="magnitude",
                        help="pruning: magnitude, random or N:M such as 2:4 (default: %(default)s)")
    parser.add_argument("--tokens", type=int, default=None,
                        help="repeat the sentence to exactly this many tokens (default: the "
                             "sentence itself)")
    parser.add_argument("--backend", choices=BACKENDS, default="verilator",
                        help="device that runs the jobs (default: %(default)s)")
    parser.add_argument("--lanes", type=int, default=DEFAULT_CONFIG.lanes,
                        help="K, nonzero weights per cycle (default: %(default)s)")
    parser.add_argument("--token-lanes", type=int, default=DEFAULT_CONFIG.token_lanes,
                        help="T, tokens in parallel (default: %(default)s)")
    parser.add_argument("--max-in-features", type=int, default=DEFAULT_CONFIG.max_in_features,
                        help="activation buffer depth: the widest layer input (default: "
                             "%(default)s)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seeds random pruning and the bert-base weights (default: "
                             "%(default)s)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object instead of the table")
    parser.add_argument("--fst", metavar="PATH", default=None,
                        help="write an FST waveform of both runs here (verilator only)")
    parser.add_argument("--port", default=None,
                        help="serial port of the board for --backend fpga, e.g. /dev/ttyUSB0")
    parser.add_argument("--memory", default="ideal", metavar="PRESET",
                        help="memory feeding the streams: ideal, onchip, ulx3s-sdram, uart or "
                             "WEIGHT[,ACT] bytes per cycle (default: %(default)s; not with "
                             "--backend fpga)")
    parser.add_argument("--energy-table", metavar="PATH", default=None,
                        help="per-event energies as JSON (default: Horowitz, ISSCC 2014, 45 nm; "
                             "see sparsemac/sw/data/energy_horowitz_45nm.json for the format)")
    parser.add_argument("--board", choices=("ulx3s-85f",), default=None,
                        help="add the estimated wall time on this board, from its committed "
                             "bitstream's clock and the UART link's baud rate")


@dataclass
class SimulationReport:
    """Everything ``sparsemac simulate`` measured; :meth:`as_json` is its ``--json`` output."""
    model: str
    layer: str
    rows: int
    cols: int
    tokens: int
    config: dict
    backend: str
    seed: int
    method: str
    target_sparsity: float | None  # None for N:M pruning, whose pattern fixes it
    sparsity: float
    jobs: int
    sparse_cycles: int
    dense_cycles: int
    speedup: float
    ideal_speedup: float | None  # None for an all-zero matrix
    efficiency: float | None
    weight_bytes_sparse: int
    weight_bytes_dense: int
    bit_exact_sparse: bool
    bit_exact_dense: bool
    predicted_sparse_cycles: int
    predicted_dense_cycles: int
    max_abs_error: float
    relative_error: float
    quantisation_relative_error: float
    device_s: float
    sim_cycles_per_s: float
    wall_s: float
    fst: str | None
    board: dict | None = None
    memory: object = None  # MemoryReport: cycles and energy under --memory, sparse and dense

    @property
    def bit_exact(self):
        return self.bit_exact_sparse and self.bit_exact_dense

    @property
    def cycle_model_match(self):
        return (self.sparse_cycles == self.predicted_sparse_cycles
                and self.dense_cycles == self.predicted_dense_cycles)

    @property
    def passed(self):
        return self.bit_exact and self.cycle_model_match

    def as_json(self):
        result = asdict(self)
        result.update(bit_exact=self.bit_exact, cycle_model_match=self.cycle_model_match,
                      memory=None if self.memory is None else self.memory.as_json())
        return result

    def sections(self):
        """The human report as ``(title, header, rows)`` tables; later sections (a board
        estimate, say) are appended to this list."""
        yes = {True: "yes", False: "NO"}
        ideal = "-" if self.ideal_speedup is None else f"{self.ideal_speedup:.2f}x"
        efficiency = "-" if self.efficiency is None else f"{self.efficiency:.1%}"
        config = self.config
        return [
            ("Job", None, [
                ["model", self.model],
                ["layer", self.layer],
                ["shape", f"{self.rows} x {self.cols} (out x in), {self.tokens} tokens, "
                          f"{self.jobs} job(s) per mode"],
                ["config", f"K={config['lanes']} T={config['token_lanes']} "
                           f"in<={config['max_in_features']}"],
                ["backend", self.backend],
                ["seed", str(self.seed)],
                ["pruning", f"{self.method}, "
                            + ("" if self.target_sparsity is None
                               else f"target {self.target_sparsity:.1%}, ")
                            + f"achieved {self.sparsity:.2%}"],
            ]),
            ("Sparse against dense, same device", ["", "sparse", "dense"], [
                ["cycles", f"{self.sparse_cycles:,}", f"{self.dense_cycles:,}"],
                ["cycle model", f"{self.predicted_sparse_cycles:,}",
                 f"{self.predicted_dense_cycles:,}"],
                ["cycles = model", yes[self.sparse_cycles == self.predicted_sparse_cycles],
                 yes[self.dense_cycles == self.predicted_dense_cycles]],
                ["weight bytes streamed", f"{self.weight_bytes_sparse:,}",
                 f"{self.weight_bytes_dense:,}"],
                ["int32 = golden model", yes[self.bit_exact_sparse], yes[self.bit_exact_dense]],
            ]),
            ("Summary", None, [
                ["speedup", f"{self.speedup:.2f}x"],
                ["ideal 1/(1-s)", ideal],
                ["efficiency", efficiency],
                ["bit-exact", yes[self.bit_exact]],
                ["max abs error", f"{self.max_abs_error:.4g} (vs the float, unpruned layer)"],
                ["relative error", f"{self.relative_error:.2%} (vs the float, unpruned layer)"],
                ["int8 error alone", f"{self.quantisation_relative_error:.2%} (relative, vs the "
                                     "float layer pruned the same way)"],
                ["device time", f"{self.device_s:.3f} s"],
                ["simulated cycles/s", f"{self.sim_cycles_per_s:,.0f}"],
                ["wall time", f"{self.wall_s:.1f} s"],
                *([["waveform", self.fst]] if self.fst else []),
            ]),
            *self._board_sections(),
            *([] if self.memory is None else self.memory.sections()),
        ]

    def _board_sections(self):
        if self.board is None:
            return []
        board, sparse, dense = self.board, self.board["sparse"], self.board["dense"]
        title = (f"Estimated on the {board['name']} (core at {board['clock_mhz']:g} MHz, "
                 f"Fmax {board['fmax_mhz']:g} MHz; UART {board['baud']:,} baud)")
        return [(title, ["", "sparse", "dense"], [
            ["compute (cycles / clock)", f"{sparse['compute_s'] * 1e3:.3f} ms",
             f"{dense['compute_s'] * 1e3:.3f} ms"],
            ["link (bytes x 10 / baud)", f"{sparse['link_s'] * 1e3:.1f} ms",
             f"{dense['link_s'] * 1e3:.1f} ms"],
            ["total, at most", f"{sparse['total_s'] * 1e3:.1f} ms",
             f"{dense['total_s'] * 1e3:.1f} ms"],
        ])]


def format_table(rows, header=None):
    """Rows of strings as aligned columns: the first left-aligned; the others right-aligned
    under a header (figures to compare), left-aligned without one (labelled values)."""
    rows = [list(map(str, row)) for row in ([header] if header else []) + list(rows)]
    widths = [max(len(row[i]) for row in rows if i < len(row))
              for i in range(max(map(len, rows)))]
    lines = []
    for row in rows:
        cells = [cell.rjust(widths[i]) if i and header else cell.ljust(widths[i])
                 for i, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def format_sections(sections):
    """``(title, header, rows)`` tables as indented text under their titles."""
    return "\n\n".join(f"{title}\n" + "\n".join("  " + line for line in
                                                 format_table(rows, header).splitlines())
                       for title, header, rows in sections)


def progress(message):
    """A progress line on stderr (stdout carries only the report)."""
    print(f"[sparsemac] {message}", file=sys.stderr, flush=True)


def _checked_layer(loaded, layer, config):
    from ..models import get_linear

    linear = get_linear(loaded.model, layer)
    if linear.in_features > config.max_in_features:
        needed = 1 << (linear.in_features - 1).bit_length()
        raise ValueError(f"layer {layer!r} has {linear.in_features} input features but the "
                         f"array holds at most {config.max_in_features} "
                         f"(--max-in-features): use --max-in-features {needed} or more")
    return linear


def simulate(args, started=None):
    """Runs the measurement ``args`` (parsed by :func:`add_arguments`) describes.

    Returns
    -------
    SimulationReport

    Raises
    ------
    ValueError, FileNotFoundError
        If the model, layer, config or token count is wrong.
    DeviceError
        If the device cannot be built or fails.
    """
    import torch

    from ...hw.config import ArrayConfig
    from ...hw.formats import Mode
    from ..driver import ReferenceDevice, open_device
    from ..csr import CSRMatrix
    from ..golden import golden_matmul
    from ..energy import load_energy_table
    from ..memory import memory_preset
    from ..memory_report import memory_report
    from ..models import capture_linear_input, load_model
    from ..offload import OffloadedLinear
    from ..pruning import parse_method, prune_mask
    from ..quantisation import approximation_error, quantise_activations, quantise_weights

    started = time.perf_counter() if started is None else started
    config = ArrayConfig(lanes=args.lanes, token_lanes=args.token_lanes,
                         max_in_features=args.max_in_features)
    if args.fst and args.backend != "verilator":
        raise ValueError("--fst needs --backend verilator")
    memory = memory_preset(args.memory)
    if args.backend == "fpga" and not memory.ideal:
        raise ValueError(f"--memory {args.memory} needs a simulated backend: the board's streams "
                         "run at its link's own rate")
    progress(f"loading {args.model} (seed {args.seed})")
    loaded = load_model(args.model, seed=args.seed)
    linear = _checked_layer(loaded, args.layer, config)
    inputs = capture_linear_input(loaded, args.layer, tokens=args.tokens)
    if (args.backend == "fpga") != (args.port is not None):
        raise ValueError("--backend fpga needs --port (the board's serial port), and --port "
                         "is only for --backend fpga")
    options = {"fst_path": args.fst} if args.fst else {}
    if args.port is not None:
        options["port"] = args.port
    weight = linear.weight.detach().float()
    structured = parse_method(args.method)[0] == "n:m"
    mask = prune_mask(weight, None if structured else args.sparsity, args.method, seed=args.seed)
    # The memory model's figures (and an onchip layer's fit) before any device work.
    progress(f"cycle and energy model under --memory {memory.name}")
    throttled = memory_report(CSRMatrix.from_dense(quantise_weights(weight * mask).values),
                              inputs.shape[0], config, memory,
                              table=load_energy_table(args.energy_table), layer=args.layer)
    if not memory.ideal:
        options["memory"] = memory
    progress(f"opening the {args.backend} device ({config.describe()})")
    with open_device(args.backend, config, **options) as device:
        layer = OffloadedLinear.from_linear(linear, device, mask=mask)
        progress(f"sparse run: {layer.weights.nnz:,} nonzeros x {inputs.shape[0]} tokens")
        with torch.no_grad():
            output = layer(inputs)
        activations = quantise_activations(inputs, layer.granularity).values
        progress("dense baseline run")
        dense = device.matmul(layer.weights, activations, Mode.DENSE)
    sparse, weights = layer.stats, layer.weights
    golden = golden_matmul(weights, activations)
    model = ReferenceDevice(config, memory=None if memory.ideal else memory)
    predicted_sparse = model.matmul(weights, activations, Mode.SPARSE)
    predicted_dense = model.matmul(weights, activations, Mode.DENSE)
    with torch.no_grad():
        error = approximation_error(linear(inputs), output)
        # Against the pruned float layer, what is left is the int8 quantisation's own error.
        quantisation = approximation_error(
            torch.nn.functional.linear(inputs, weight * mask, linear.bias), output)

    board = None if args.board is None else _board_estimate(
        args.board, config, sparse.cycles, dense.cycles,
        sparse.weight_bytes + dense.activation_bytes + dense.output_bytes,
        dense.weight_bytes + dense.activation_bytes + dense.output_bytes)

    sparsity = weights.sparsity
    ideal = 1.0 / (1.0 - sparsity) if sparsity < 1.0 else None
    speedup = dense.cycles / sparse.cycles
    device_s = sparse.device_s + dense.wall_s
    return SimulationReport(
        model=loaded.name, layer=args.layer, rows=weights.rows, cols=weights.cols,
        tokens=inputs.shape[0], config=config.as_dict(), backend=args.backend, seed=args.seed,
        method=args.method, target_sparsity=None if ":" in args.method else args.sparsity,
        sparsity=sparsity, jobs=sparse.jobs,
        sparse_cycles=sparse.cycles, dense_cycles=dense.cycles, speedup=speedup,
        ideal_speedup=ideal, efficiency=None if ideal is None else speedup / ideal,
        weight_bytes_sparse=sparse.weight_bytes, weight_bytes_dense=dense.weight_bytes,
        bit_exact_sparse=bool(torch.equal(layer.last_sums, golden)),
        bit_exact_dense=bool(torch.equal(dense.sums, golden)),
        predicted_sparse_cycles=predicted_sparse.cycles,
        predicted_dense_cycles=predicted_dense.cycles,
        max_abs_error=error.max_abs, relative_error=error.relative,
        quantisation_relative_error=quantisation.relative, device_s=device_s,
        sim_cycles_per_s=(sparse.cycles + dense.cycles) / device_s if device_s else 0.0,
        wall_s=time.perf_counter() - started, fst=args.fst, board=board, memory=throttled)


def _board_estimate(board, config, sparse_cycles, dense_cycles, sparse_bytes, dense_bytes):
    """The board's estimated wall time for both runs, from its committed build's manifest."""
    from dataclasses import asdict

    from ...bitstreams.build import board_estimate, committed_folder, read_manifest
    from ...hw.config import ArrayConfig

    manifest = read_manifest(committed_folder(board))
    built = ArrayConfig(**manifest["config"])
    if built != config:
        raise ValueError(f"the committed {board} bitstream is built for {built.describe()}, "
                         f"not {config.describe()}: pass --lanes {built.lanes} --token-lanes "
                         f"{built.token_lanes} --max-in-features {built.max_in_features}, or "
                         "build one for this config with `sparsemac build`")
    sparse = board_estimate(sparse_cycles, sparse_bytes, manifest)
    dense = board_estimate(dense_cycles, dense_bytes, manifest)
    return {"name": board, "clock_mhz": sparse.clock_mhz, "fmax_mhz": sparse.fmax_mhz,
            "baud": sparse.baud, "sparse": asdict(sparse), "dense": asdict(dense)}


def run(args):
    started = time.perf_counter()
    report = simulate(args, started)
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        print(format_sections(report.sections()))
    if not report.passed:
        progress("FAILED: the device disagrees with the golden model or the cycle model")
    return 0 if report.passed else 1
