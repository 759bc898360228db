"""The `keras-batchtune` command line. Nothing imports this module."""

import argparse
import os
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
    report = commands.add_parser(
        "report",
        help="print a tuner project's trials and draw them as a PNG",
    )
    report.add_argument("directory", help="the tuner's project directory")
    report.add_argument(
        "--output", default=None, help="PNG path (default DIR/report.png)"
    )
    return parser


def _report(directory, output):
    from keras_batchtune import report

    try:
        oracle = report.load_project(directory)
    except report.ProjectError as error:
        print(f"keras-batchtune report: {error}", file=sys.stderr)
        return 2
    print(report.trials_table(oracle))
    print()
    print(report.best_line(oracle))
    print(report.front_line(oracle))
    preferred = report.preferred_line(oracle)
    if preferred:
        print(preferred)
    for notice in report.range_notices(oracle):
        print(notice)
    output = output or os.path.join(directory, "report.png")
    try:
        report.plot_oracle(oracle, output)
    except ImportError:
        print(report.PLOT_HINT)
        return 0
    print(f"wrote {output}")
    return 0


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
    if args.command == "report":
        return _report(args.directory, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
