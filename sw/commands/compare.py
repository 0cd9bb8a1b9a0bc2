"""``sparsemac compare``: sweep pruning method and sparsity over a whole offloaded MiniLM and
tabulate cycles saved against output fidelity, with plots."""

import math
import time
from dataclasses import asdict, dataclass, fields

HELP = ("Sweep sparsity and pruning method (and array configs) over a whole offloaded MiniLM: "
        "cycles sparse vs dense, weight bytes and fidelity vs the float model, as CSV, JSON "
        "and PNG plots.")

DEFAULT_SPARSITIES = "0,0.3,0.4,0.5,0.6,0.7,0.8,0.9,0.95"
DEFAULT_METHODS = "magnitude,random,2:4,1:4"
#: The point ``--verify`` runs on Verilator when the sweep has it (else the sweep's last).
VERIFY_POINT = ("magnitude", 0.9)


@dataclass
class ComparePoint:
    """One row of the sweep: a pruned, offloaded model on one array configuration.

    Cycles are for the workload (the similarity benchmark's sentences in one batch); the
    fidelity figures compare with the float, unpruned model and do not depend on the array.
    """

    method: str
    config: str
    sparsity_target: float
    sparsity: float
    sparse_cycles: int
    dense_cycles: int
    speedup: float
    ideal_speedup: float
    efficiency: float
    sparse_weight_bytes: int
    dense_weight_bytes: int
    embedding_cosine: float
    ranking_agreement: float
    grade_agreement: float


def add_arguments(parser):
    parser.add_argument("--model", default="minilm",
                        help="minilm (default) or a local BERT checkpoint with a tokenizer")
    parser.add_argument("--sparsities", default=DEFAULT_SPARSITIES,
                        help=f"comma-separated sparsities of magnitude and random pruning "
                             f"(default {DEFAULT_SPARSITIES})")
    parser.add_argument("--methods", default=DEFAULT_METHODS,
                        help=f"comma-separated methods; N:M patterns give one point each at "
                             f"1 - N/M (default {DEFAULT_METHODS})")
    parser.add_argument("--configs", default="k8t4",
                        help="comma-separated arrays as k<lanes>t<token lanes> (default k8t4)")
    parser.add_argument("--granularity", default="tensor", choices=("tensor", "token"),
                        help="activation quantisation scale per call or per token")
    parser.add_argument("--seed", type=int, default=0, help="seed of random pruning (default 0)")
    parser.add_argument("--output", default="results/compare",
                        help="folder for compare.csv, compare.json and the PNG plots "
                             "(default results/compare)")
    parser.add_argument("--verify", action="store_true",
                        help="rerun one point (magnitude 90 %%) on the Verilator device: same "
                             "cycles and bit-exact sums as the reference")


def run(args):
    started = time.perf_counter()
    methods = [method.strip() for method in args.methods.split(",") if method.strip()]
    sparsities = [float(value) for value in args.sparsities.split(",") if value.strip()]
    configs = [_parse_config(text) for text in args.configs.split(",") if text.strip()]
    if not methods or not configs:
        raise ValueError("need at least one method and one config")
    print(f"seed {args.seed}")
    result = _sweep(args, methods, sparsities, configs, started)
    verify = result["verify"]
    return 1 if verify and not (verify["bit_exact"] and verify["cycles_equal"]) else 0


def _parse_config(text):
    import re

    from ...hw.config import ArrayConfig

    match = re.fullmatch(r"k(\d+)t(\d+)", text.strip().lower())
    if not match:
        raise ValueError(f"config {text!r}: write k<lanes>t<token lanes>, e.g. k8t4")
    return text.strip().lower(), ArrayConfig(lanes=int(match[1]), token_lanes=int(match[2]))


def _points(methods, sparsities):
    """(method, sparsity) pairs of the sweep; an N:M method is one point, sparsity None."""
    points = []
    for method in methods:
        if ":" in method:
            points.append((method, None))
        else:
            points.extend((method, sparsity) for sparsity in sparsities)
    return points


def _sweep(args, methods, sparsities, configs, started):
    import copy
    import json
    from pathlib import Path

    import torch
    from tqdm import tqdm

    from ..driver import open_device
    from ..model_offload import offload
    from ..models import SIMILARITY_PAIRS, load_model, ranking_agreement, sentence_embeddings

    torch.set_num_threads(1)  # small elementwise work per layer: see the bert command
    loaded = load_model(args.model)
    if loaded.tokenizer is None:
        raise ValueError(f"{loaded.name} has no tokenizer: the fidelity benchmark needs text")
    sentences = ([pair.first for pair in SIMILARITY_PAIRS]
                 + [pair.second for pair in SIMILARITY_PAIRS])
    grades = [pair.grade for pair in SIMILARITY_PAIRS]

    def embed(model):
        # One batch: every layer runs once on the whole benchmark, padding included.
        return sentence_embeddings(model, loaded.tokenizer, sentences, batch_size=len(sentences))

    def scores(embeddings):
        pairs = len(SIMILARITY_PAIRS)
        return (embeddings[:pairs] * embeddings[pairs:]).sum(dim=1)

    float_embeddings = embed(loaded.model)
    float_scores = scores(float_embeddings)
    (name, config), others = configs[0], configs[1:]
    device = open_device("reference", config)
    rows = []
    points = _points(methods, sparsities)
    for method, sparsity in tqdm(points, desc="sweep", unit="point"):
        model, report = offload(copy.deepcopy(loaded.model), device, sparsity, method,
                                seed=args.seed, granularity=args.granularity)
        embeddings = embed(model)
        point_scores = scores(embeddings)
        fidelity = dict(
            embedding_cosine=float((embeddings * float_embeddings).sum(dim=1).mean()),
            ranking_agreement=ranking_agreement(point_scores, float_scores),
            grade_agreement=ranking_agreement(point_scores, grades))
        cycles = [(name, report.sparse_cycles, report.dense_cycles)]
        cycles += [(other, *report.cycles_for(other_config)) for other, other_config in others]
        for config_name, sparse, dense in cycles:
            speedup, ideal = dense / sparse, report.ideal_speedup
            rows.append(ComparePoint(
                method=method, config=config_name, sparsity_target=report.sparsity_target,
                sparsity=report.sparsity, sparse_cycles=sparse, dense_cycles=dense,
                speedup=speedup, ideal_speedup=ideal, efficiency=speedup / ideal,
                sparse_weight_bytes=report.sparse_weight_bytes,
                dense_weight_bytes=report.dense_weight_bytes, **fidelity))

    verify = _verify(loaded, points, config, args) if args.verify else None
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    _write_csv(output / "compare.csv", rows)
    tokens = int(loaded.tokenizer(sentences, padding=True,
                                  return_tensors="pt")["input_ids"].numel())
    summary = {
        "model": loaded.name, "seed": args.seed, "granularity": args.granularity,
        "workload": {"sentences": len(sentences), "tokens_per_layer_call": tokens},
        "configs": {config_name: config.as_dict() for config_name, config in configs},
        "float_grade_agreement": ranking_agreement(float_scores, grades),
        "points": [_json_ready(asdict(row)) for row in rows], "verify": verify,
        "wall_s": time.perf_counter() - started,
    }
    (output / "compare.json").write_text(json.dumps(summary, indent=2) + "\n")
    plots = _plot(rows, output)
    _print_table(rows, summary)
    print("wrote " + ", ".join(str(output / file)
                               for file in ("compare.csv", "compare.json", *plots)))
    return summary


def _verify(loaded, points, config, args):
    """Rerun the sample point on one sentence on Verilator and on the reference."""
    import copy

    import torch

    from ..driver import open_device
    from ..model_offload import cross_check, offload
    from ..models import DEFAULT_SENTENCE, tokenize

    method, sparsity = VERIFY_POINT if VERIFY_POINT in points else points[-1]
    inputs = tokenize(loaded, DEFAULT_SENTENCE)
    reports = []
    for backend in ("reference", "verilator"):
        with open_device(backend, config) as device:
            model, report = offload(copy.deepcopy(loaded.model), device, sparsity, method,
                                    seed=args.seed, granularity=args.granularity,
                                    keep_sums=True, progress=True)
            with torch.no_grad():
                model(**inputs)
        reports.append(report)
    check = cross_check(*reports)
    reference, verilator = reports
    return {"method": method, "sparsity": sparsity, "config": config.as_dict(),
            "tokens": int(inputs["input_ids"].shape[1]), "bit_exact": check.bit_exact,
            "cycles_equal": check.cycles_equal, "sums_mismatch": check.sums_mismatch,
            "cycles_mismatch": check.cycles_mismatch,
            "sparse_cycles": verilator.sparse_cycles, "dense_cycles": verilator.dense_cycles,
            "reference_sparse_cycles": reference.sparse_cycles,
            "device_s": verilator.device_s}


def _json_ready(point):
    """JSON has no infinity (the ideal speedup at sparsity 1): null stands for it."""
    return {key: None if isinstance(value, float) and not math.isfinite(value) else value
            for key, value in point.items()}


def _write_csv(path, rows):
    import csv

    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow([field.name for field in fields(ComparePoint)])
        writer.writerows([getattr(row, field.name) for field in fields(ComparePoint)]
                         for row in rows)


def _plot(rows, output):
    """Speedup and fidelity against sparsity; returns the file names written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    methods = list(dict.fromkeys(row.method for row in rows))
    configs = list(dict.fromkeys(row.config for row in rows))
    styles = dict(zip(configs, ("-", "--", ":", "-.") * len(configs)))
    colours = {method: f"C{index}" for index, method in enumerate(methods)}

    def series(method, config=None):
        wanted = config or configs[0]
        chosen = [row for row in rows if row.method == method and row.config == wanted]
        return sorted(chosen, key=lambda row: row.sparsity)

    figure, axes = plt.subplots(figsize=(7, 4.5))
    top = max(row.sparsity for row in rows)
    ideal = np.linspace(0, max(top, 0.5), 200)
    axes.plot(ideal, 1 / (1 - ideal), color="black", linestyle=":", label="ideal 1/(1-s)")
    for method in methods:
        for config in configs:
            points = series(method, config)
            axes.plot([row.sparsity for row in points], [row.speedup for row in points],
                      marker="o", color=colours[method], linestyle=styles[config],
                      label=method if len(configs) == 1 else f"{method} {config}")
    axes.set_yscale("log")
    axes.set_xlabel("achieved sparsity s")
    axes.set_ylabel("speedup (dense / sparse cycles)")
    axes.set_title("Whole MiniLM on the sparse MAC array: speedup vs sparsity")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(output / "speedup_vs_sparsity.png", dpi=120)
    plt.close(figure)

    figure, (cosine_axes, rank_axes) = plt.subplots(1, 2, figsize=(11, 4.5))
    for method in methods:
        points = series(method)
        sparsity = [row.sparsity for row in points]
        cosine_axes.plot(sparsity, [row.embedding_cosine for row in points], marker="o",
                         color=colours[method], label=method)
        rank_axes.plot(sparsity, [row.ranking_agreement for row in points], marker="o",
                       color=colours[method], label=method)
    cosine_axes.set_ylabel("embedding cosine vs float model")
    rank_axes.set_ylabel("similarity ranking Spearman vs float model")
    for axes in (cosine_axes, rank_axes):
        axes.set_xlabel("achieved sparsity s")
        axes.grid(True, alpha=0.3)
        axes.legend()
    figure.suptitle("Whole MiniLM, int8 offloaded: fidelity vs sparsity")
    figure.tight_layout()
    figure.savefig(output / "fidelity_vs_sparsity.png", dpi=120)
    plt.close(figure)
    return ["speedup_vs_sparsity.png", "fidelity_vs_sparsity.png"]


def _print_table(rows, summary):
    workload = summary["workload"]
    print(f"{summary['model']}: {workload['sentences']} sentences in one batch "
          f"({workload['tokens_per_layer_call']} tokens per layer call); float model's ranking "
          f"vs the pairs' grades: Spearman {summary['float_grade_agreement']:.3f}")
    header = (f"{'method':<10} {'config':<6} {'sparsity':>8} {'sparse cyc':>12} "
              f"{'dense cyc':>12} {'speedup':>8} {'ideal':>7} {'eff':>5} {'cosine':>7} "
              f"{'rank':>6}")
    print(header)
    print("-" * len(header))
    for row in rows:
        print(f"{row.method:<10} {row.config:<6} {row.sparsity:>8.3f} {row.sparse_cycles:>12,} "
              f"{row.dense_cycles:>12,} {row.speedup:>7.2f}x {row.ideal_speedup:>6.2f}x "
              f"{row.efficiency:>5.2f} {row.embedding_cosine:>7.4f} "
              f"{row.ranking_agreement:>6.3f}")
    verify = summary["verify"]
    if verify:
        verdict = "PASS" if verify["bit_exact"] and verify["cycles_equal"] else "FAIL"
        print(f"verify ({verify['method']} {verify['sparsity']}, one sentence of "
              f"{verify['tokens']} tokens, Verilator vs reference): bit-exact "
              f"{verify['bit_exact']}, cycles equal {verify['cycles_equal']} "
              f"({verify['sparse_cycles']:,} sparse cycles): {verdict}")
    print(f"wall {summary['wall_s']:.1f} s")
