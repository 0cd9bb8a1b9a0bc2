"""``sparsemac bert``: run real sentences through a whole BERT whose encoder linears are pruned
and offloaded to a device, and report the cycles saved and what the outputs lost."""

import json
import time

HELP = ("Offload every encoder linear of a BERT to a device, run a sentence, and report sparse "
        "vs dense cycles per layer and the output fidelity against the float model.")

DEFAULT_SPARSITY = 0.9


def add_arguments(parser):
    parser.add_argument("--model", default="minilm",
                        help="minilm (real weights, default), bert-base (BERT-base shapes, "
                             "random weights) or a local BERT checkpoint directory")
    parser.add_argument("--backend", default="reference",
                        help="device back end: reference (golden model + exact cycle model, "
                             "default), verilator (cycle-accurate RTL; also checked bit for bit "
                             "against reference), amaranth, fpga")
    parser.add_argument("--sparsity", type=float, default=None,
                        help=f"fraction of weights pruned (default {DEFAULT_SPARSITY}; fixed "
                             "by the pattern for N:M methods)")
    parser.add_argument("--method", default="magnitude",
                        help="magnitude (default), random or N:M such as 2:4")
    parser.add_argument("--scope", default="local", choices=("local", "global"),
                        help="one threshold per layer (local) or over all layers (global)")
    parser.add_argument("--granularity", default="tensor", choices=("tensor", "token"),
                        help="activation quantisation scale per call or per token")
    parser.add_argument("--text", default=None,
                        help="the sentence to run (default: the built-in 16-token sentence)")
    parser.add_argument("--tokens", type=int, default=None,
                        help="exact sequence length: the text is repeated or cut to fill it")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of random pruning and of bert-base's weights (default 0)")
    parser.add_argument("--lanes", type=int, default=8, help="K, nonzero lanes (default 8)")
    parser.add_argument("--token-lanes", type=int, default=4,
                        help="T, token lanes (default 4)")
    parser.add_argument("--max-in", type=int, default=4096,
                        help="activation buffer depth, the widest layer input (default 4096)")
    parser.add_argument("--verify", action="store_true",
                        help="measure the dense baseline on the device instead of predicting "
                             "it with the cycle model")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object instead of the tables")


def run(args):
    started = time.perf_counter()
    result = _measure(args, started)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_tables(result)
    return 1 if False in (result["bit_exact"], result["cycles_equal"]) else 0


def _measure(args, started):
    import copy

    import torch

    from ...hw.config import ArrayConfig
    from ..driver import open_device
    from ..model_offload import cross_check, offload
    from ..models import DEFAULT_SENTENCE, load_model, similarity_scores, tokenize

    # Per-layer work here is small and elementwise (quantise, pack, check): one thread beats
    # two that wait on each other, by an order of magnitude when the machine is busy.
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    config = ArrayConfig(lanes=args.lanes, token_lanes=args.token_lanes,
                         max_in_features=args.max_in)
    is_n_m = ":" in args.method
    sparsity = args.sparsity if args.sparsity is not None or is_n_m else DEFAULT_SPARSITY
    loaded = load_model(args.model, seed=args.seed)
    inputs = tokenize(loaded, args.text or DEFAULT_SENTENCE, args.tokens)
    tokens = int(inputs["input_ids"].shape[1])
    float_embedding = _mean_pooled(loaded.model, inputs)
    # A random BERT-base has nothing to rank; a trained model and its tokenizer do.
    rank = loaded.tokenizer is not None and loaded.name != "bert-base"
    float_scores = similarity_scores(loaded.model, loaded.tokenizer) if rank else None
    check = args.backend != "reference"
    reference_model = copy.deepcopy(loaded.model) if check else None

    options = dict(seed=args.seed, granularity=args.granularity, scope=args.scope)
    with open_device(args.backend, config) as device:
        model, report = offload(loaded.model, device, sparsity, args.method, progress=True,
                                measure_dense=args.verify, keep_sums=check, **options)
        embedding = _mean_pooled(model, inputs, report, f"{args.backend} run")
        summary = report.as_dict()
    cosine = float(torch.nn.functional.cosine_similarity(embedding, float_embedding).mean())

    crosscheck = None
    if check:
        reference_model, reference = offload(reference_model, open_device("reference", config),
                                             sparsity, args.method, keep_sums=True,
                                             measure_dense=args.verify, **options)
        _mean_pooled(reference_model, inputs, reference, "reference run")
        crosscheck = cross_check(reference, report)
        model = reference_model  # bit-exact or not, the ranking runs on the reference
    agreement = None
    if rank:
        from ..models import ranking_agreement

        agreement = ranking_agreement(similarity_scores(model, loaded.tokenizer), float_scores)

    layers = summary.pop("layers")
    if crosscheck is not None:
        for layer in layers:
            layer["bit_exact"] = layer["name"] not in crosscheck.sums_mismatch
            layer["cycles_equal"] = layer["name"] not in crosscheck.cycles_mismatch
    return {
        "model": loaded.name, "source": loaded.source, "backend": args.backend,
        "method": args.method, "sparsity": summary["sparsity_target"],
        "achieved_sparsity": summary["sparsity"], "scope": args.scope, "seed": args.seed,
        "tokens": tokens, "config": summary["config"],
        "sparse_cycles": summary["sparse_cycles"], "dense_cycles": summary["dense_cycles"],
        "speedup": summary["speedup"], "ideal_speedup": summary["ideal_speedup"],
        "dense_measured": summary["dense_measured"],
        "sparse_weight_bytes": summary["sparse_weight_bytes"],
        "dense_weight_bytes": summary["dense_weight_bytes"],
        "bit_exact": None if crosscheck is None else crosscheck.bit_exact,
        "cycles_equal": None if crosscheck is None else crosscheck.cycles_equal,
        "embedding_cosine": cosine, "ranking_agreement": agreement,
        "device_s": summary["device_s"], "wall_s": time.perf_counter() - started,
        "layers": layers,
    }


def _mean_pooled(model, inputs, report=None, desc=None):
    """The sentence embedding of ``inputs`` (mean pooling, L2 norm), with a per-layer progress
    bar when the model is offloaded."""
    import torch
    from tqdm import tqdm

    bar, handles = None, []
    if report is not None:
        bar = tqdm(total=len(report.modules), desc=desc, unit="layer", leave=False)

        def advance(*_):
            bar.update()

        handles = [module.register_forward_hook(advance) for module in report.modules]
    try:
        with torch.no_grad():
            hidden = model(**inputs).last_hidden_state
    finally:
        for handle in handles:
            handle.remove()
        if bar is not None:
            bar.close()
    mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=1)


def _print_tables(result):
    config = result["config"]
    print(f"{result['model']} on {result['backend']} (K={config['lanes']} "
          f"T={config['token_lanes']}), {result['method']} pruning to "
          f"{result['achieved_sparsity']:.1%} ({result['scope']}), {result['tokens']} tokens, "
          f"seed {result['seed']}")
    checked = result["bit_exact"] is not None
    header = (f"{'layer':<40} {'shape':>10} {'sparsity':>8} {'sparse cyc':>11} "
              f"{'dense cyc':>11} {'speedup':>7} {'ideal':>6}" + ("  exact" if checked else ""))
    print(header)
    print("-" * len(header))
    for layer in result["layers"]:
        shape = "x".join(map(str, layer["shape"]))
        print(f"{layer['name']:<40} {shape:>10} {layer['sparsity']:>8.3f} "
              f"{layer['sparse_cycles']:>11,} {layer['dense_cycles']:>11,} "
              f"{_times(layer['speedup']):>7} {_times(layer['ideal_speedup']):>6}"
              + (f"  {'yes' if layer['bit_exact'] else 'NO'}" if checked else ""))
    print("-" * len(header))
    print(f"{'total':<40} {'':>10} {result['achieved_sparsity']:>8.3f} "
          f"{result['sparse_cycles']:>11,} {result['dense_cycles']:>11,} "
          f"{_times(result['speedup']):>7} {_times(result['ideal_speedup']):>6}")
    baseline = "measured on the device" if result["dense_measured"] else "exact cycle model"
    print(f"dense baseline: {baseline}; weights {result['sparse_weight_bytes']:,} bytes CSR vs "
          f"{result['dense_weight_bytes']:,} dense")
    fidelity = f"fidelity vs float model: embedding cosine {result['embedding_cosine']:.4f}"
    if result["ranking_agreement"] is not None:
        fidelity += f", similarity ranking Spearman {result['ranking_agreement']:.3f}"
    print(fidelity)
    if checked:
        layers = result["layers"]
        exact = sum(layer["bit_exact"] for layer in layers)
        same = sum(layer["cycles_equal"] for layer in layers)
        print(f"{result['backend']} vs reference: int32 sums bit-exact on {exact}/{len(layers)} "
              f"layers, cycles equal on {same}/{len(layers)}: "
              + ("PASS" if result["bit_exact"] and result["cycles_equal"] else "FAIL"))
    print(f"wall {result['wall_s']:.1f} s (device {result['device_s']:.1f} s)")


def _times(value):
    return "-" if value is None else f"{value:.2f}x"
