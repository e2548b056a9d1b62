"""``lockstep``: the jobs as subcommands. Every subcommand takes the lake, engine and repo of declarations
from ``--lake``/``--engine``/``--repo`` or the LOCKSTEP_* environment (see ``jobs.config.Config``), and the
declarations it works on from ``--model`` / ``--source`` / ``--feature-set`` (default: the repo's only or
first one; ``lockstep repo`` lists them).

A command that fails on one of the platform's errors (a missing or corrupt partition, a failed suite, a SQL
error, a bad declaration or input file) prints one message naming what failed and exits 1; ``--debug``
prints the traceback too (``jobs.cli.errors``)."""

from __future__ import annotations

import argparse

from jobs.cli import errors


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args) or 0
    except Exception as exc:
        if not errors.is_platform_error(exc):
            raise  # a bug: its traceback is the report
        return errors.report(exc, args.command, debug=args.debug)


def build_parser() -> argparse.ArgumentParser:
    """The ``lockstep`` parser: the global flags (``Config.from_args`` reads them) and every subcommand,
    each declared by its stage's module in this package."""
    from jobs.cli import demo, features, ingest, models, quality, repo, scoring, serving, skew, training

    p = argparse.ArgumentParser(
        prog="lockstep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--lake", help="lake root: a path or fsspec URL (env LOCKSTEP_LAKE; default ./.lockstep/lake)")
    p.add_argument(
        "--engine", choices=("local", "dask", "spark"), help="feature engine (env LOCKSTEP_ENGINE; default local)"
    )
    p.add_argument("--dask-address", help="dask.distributed scheduler address (default: a LocalCluster per run)")
    p.add_argument("--spark-master", help="Spark master URL (default local[2])")
    p.add_argument("--buckets", type=int, help="hash buckets for the Dask/Spark engines (default 16)")
    p.add_argument(
        "--repo",
        metavar="PATH_OR_PACKAGE",
        help="the declarations: a package or a directory of modules (env LOCKSTEP_REPO; default features.projects)",
    )
    p.add_argument(
        "--debug",
        action="store_true",
        help="on an error, print its traceback too (default: one message naming what failed, exit 1)",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    repo.add_parsers(sub)
    demo.add_parsers(sub)
    ingest.add_parsers(sub)
    features.add_parsers(sub)
    quality.add_validate_parser(sub)
    quality.add_quarantine_parser(sub)
    training.add_labels_parser(sub)
    training.add_training_set_parser(sub)
    training.add_train_parser(sub)
    models.add_parsers(sub)
    training.add_baseline_parser(sub)
    training.add_tune_parser(sub)
    scoring.add_parsers(sub)
    serving.add_parsers(sub)
    skew.add_parsers(sub)
    return p
