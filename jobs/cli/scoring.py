"""``lockstep score`` and ``lockstep publish``: batch scoring and the SQL table of predictions."""

from __future__ import annotations

from jobs.cli.common import add_model_arg, days, model_name, staged_note
from jobs.config import Config
from jobs.models.registry import Registry
from jobs.scoring.batch import score_snapshot
from jobs.scoring.sql import publish_predictions


def add_parsers(subparsers) -> None:
    """Every command of the scoring stage, in ``lockstep --help`` order."""
    add_score_parser(subparsers)
    add_publish_parser(subparsers)


def add_score_parser(subparsers) -> None:
    """``lockstep score --ds D [--to E] [--model M] [--shadow]``."""
    s = subparsers.add_parser(
        "score", help="score a model's queries of day D with its champion -> its predictions ds=D"
    )
    s.add_argument("--ds", required=True)
    s.add_argument("--to", help="last day of a range (inclusive)")
    add_model_arg(
        s,
        "the declared model (default: the repo's only model, else the first by name), or a registered name "
        "whose lineage names one (a baseline)",
    )
    s.add_argument("--shadow", action="store_true", help="also score with the challenger")
    s.add_argument("--no-validate", action="store_true", help="skip the predictions suite")
    s.add_argument(
        "--allow-unvalidated",
        action="store_true",
        help="score input partitions that did not pass `lockstep validate` (exploration: the predictions are "
        "marked as built from unvalidated input and never count as validated)",
    )
    s.add_argument("--publish", action="store_true", help="then publish each day to the SQL table")
    s.add_argument("--sql-url", help="SQLAlchemy URL (default: env LOCKSTEP_SQL_URL, else embedded SQLite)")
    s.set_defaults(func=_cmd_score)


def _cmd_score(args) -> int:
    cfg = Config.from_args(args)
    registry = Registry.from_config(cfg)
    for d in days(args.ds, args.to):
        m = score_snapshot(
            cfg,
            d,
            args.model,
            shadow=args.shadow,
            registry=registry,
            validate=not args.no_validate,
            allow_unvalidated=args.allow_unvalidated,
        )
        used = ", ".join(f"{x['role']} v{x['version']}" for x in m.producer["models"])
        print(f"{m.table}/ds={m.ds}: {m.rows} rows ({used})")
        if note := staged_note(cfg.lake(), [m]):  # --no-validate over a validated day
            print(f"  {note}")
        if args.publish:
            r = publish_predictions(cfg, d, m.producer["model"], args.sql_url, allow_unvalidated=args.allow_unvalidated)
            print(f"  published {r['rows']} rows to {r['table']} at {r['url']}")
    return 0


def add_publish_parser(subparsers) -> None:
    """``lockstep publish --ds D [--to E] [--model M] [--sql-url URL]``."""
    s = subparsers.add_parser("publish", help="publish a model's predictions ds=D to its SQL table (replaces day D)")
    s.add_argument("--ds", required=True)
    s.add_argument("--to")
    add_model_arg(s)
    s.add_argument("--sql-url", help="SQLAlchemy URL (default: env LOCKSTEP_SQL_URL, else embedded SQLite)")
    s.add_argument("--table", help="SQL table name (default: the model's declared sql_table_name)")
    s.add_argument(
        "--allow-unvalidated",
        action="store_true",
        help="publish predictions days that did not pass `lockstep validate` (exploration)",
    )
    s.set_defaults(func=_cmd_publish)


def _cmd_publish(args) -> int:
    cfg = Config.from_args(args)
    for d in days(args.ds, args.to):
        r = publish_predictions(
            cfg, d, model_name(cfg, args), args.sql_url, table_name=args.table, allow_unvalidated=args.allow_unvalidated
        )
        print(f"{r['table']} ds={r['ds']}: {r['rows']} rows at {r['url']}")
    return 0
