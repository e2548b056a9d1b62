"""``lockstep land``, ``lockstep ingest-cdnow`` and ``lockstep generate``: land raw partitions of a source."""

from __future__ import annotations

from jobs.cli import errors
from jobs.cli.common import staged_note
from jobs.config import Config
from jobs.ingest.cdnow import ingest_cdnow
from jobs.ingest.cdnow_synthetic import generate_events
from jobs.ingest.landing import LandingError, land


def add_parsers(subparsers) -> None:
    """``lockstep land --source S --ds A [--to B]``, ``lockstep ingest-cdnow [--from A] [--to B]``, ``lockstep generate``."""
    s = subparsers.add_parser(
        "land", help="land days of a declared source into raw_events/<source> (one partition a day)"
    )
    s.add_argument("--source", help="the declared source (default: the repo's only/first source)")
    s.add_argument("--ds", required=True, help="first day YYYY-MM-DD")
    s.add_argument("--to", help="last day of a range (inclusive)")
    s.add_argument("--path", help="land from this path/URL pattern instead of the declared one (e.g. a re-export)")
    s.set_defaults(func=cmd_land)

    s = subparsers.add_parser(
        "ingest-cdnow", help="the CDNOW example's shortcut: land the shipped log into its source's raw table"
    )
    s.add_argument("--from", dest="ds_from", help="first ingest day (default: the data's first)")
    s.add_argument("--to", dest="ds_to", help="last ingest day (default: the data's last)")
    s.set_defaults(func=cmd_ingest_cdnow)

    s = subparsers.add_parser(
        "generate", help="write synthetic CDNOW-shaped events into the CDNOW source's raw table at any scale (streamed)"
    )
    s.add_argument("--entities", type=int, default=100_000)
    s.add_argument("--events", type=int, default=5_000_000)
    s.add_argument("--days", type=int, default=60)
    s.add_argument("--start", default="2024-01-01")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_generate)


def cmd_land(args) -> int:
    import sys

    cfg = Config.from_args(args)
    repo = cfg.repo()
    if args.source:
        name = args.source
    elif repo.sources:
        name = sorted(repo.sources)[0]
    else:
        print("lockstep land: error: the repo declares no source", file=sys.stderr)
        return 2
    try:
        manifests = land(cfg, name, args.ds, args.to, path=args.path)
    except (LandingError, KeyError) as exc:
        return errors.report(exc, "land", debug=getattr(args, "debug", False), status=2)
    rows = sum(m.rows for m in manifests)
    table = repo.source(name).table
    print(f"{table}: {len(manifests)} partition(s), {rows} rows ({manifests[0].ds}..{manifests[-1].ds})")
    if note := staged_note(cfg.lake(), manifests):
        print(note)
    return 0


def cmd_ingest_cdnow(args) -> int:
    lake = Config.from_args(args).lake()
    manifests = ingest_cdnow(lake, args.ds_from, args.ds_to)
    rows = sum(m.rows for m in manifests)
    table = manifests[0].table
    print(
        f"{table}: {len(manifests)} partitions, {rows} rows ({manifests[0].ds}..{manifests[-1].ds}) in {lake.path(table)}"
    )
    if note := staged_note(lake, manifests):
        print(note)
    return 0


def cmd_generate(args) -> int:
    manifests = generate_events(
        Config.from_args(args).lake(),
        entities=args.entities,
        events=args.events,
        days=args.days,
        start=args.start,
        seed=args.seed,
    )
    table = manifests[0].table
    print(f"{table}: {len(manifests)} partitions, {sum(m.rows for m in manifests)} rows (generated, seed={args.seed})")
    return 0
