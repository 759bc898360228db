"""The `keras-batchtune` command line. Nothing imports this module."""

import argparse
import sys


def _parser():
    parser = argparse.ArgumentParser(
        prog="keras-batchtune",
        description="Batch size as a searched, LR-coupled hyperparameter.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="tune batch size and learning rate on bundled digits data",
    )
    demo.add_argument("--max-trials", type=int, default=10)
    demo.add_argument("--epochs", type=int, default=10)
    demo.add_argument("--logdir", default="batchtune_runs")
    demo.add_argument("--seed", type=int, default=0)
    return parser


def main(argv=None):
    """Runs the command line.

    Args:
        argv: The arguments (without the program name); defaults to
            `sys.argv[1:]`.

    Returns:
        The exit code.
    """
    args = _parser().parse_args(argv)
    if args.command == "demo":
        for name in ("max_trials", "epochs"):
            if getattr(args, name) < 1:
                print(
                    f"keras-batchtune: --{name.replace('_', '-')} must be "
                    f">= 1, got {getattr(args, name)}",
                    file=sys.stderr,
                )
                return 2
        from keras_batchtune.demo import run_demo

        run_demo(
            max_trials=args.max_trials,
            epochs=args.epochs,
            logdir=args.logdir,
            seed=args.seed,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
