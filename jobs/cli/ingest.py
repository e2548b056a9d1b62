"""``lockstep ingest-cdnow`` and ``lockstep generate``: land raw_events partitions."""

from __future__ import annotations

from jobs.config import Config
from jobs.ingest.cdnow import ingest_cdnow
from jobs.ingest.generate import generate_events


def add_parsers(subparsers) -> None:
    """``lockstep ingest-cdnow [--from A] [--to B]`` and ``lockstep generate ...``."""
    s = subparsers.add_parser("ingest-cdnow", help="land the shipped CDNOW log as raw_events partitions by ingest date")
    s.add_argument("--from", dest="ds_from", help="first ingest day (default: the data's first)")
    s.add_argument("--to", dest="ds_to", help="last ingest day (default: the data's last)")
    s.set_defaults(func=cmd_ingest_cdnow)

    s = subparsers.add_parser("generate", help="write synthetic raw_events of the CDNOW schema at any scale (streamed)")
    s.add_argument("--entities", type=int, default=100_000)
    s.add_argument("--events", type=int, default=5_000_000)
    s.add_argument("--days", type=int, default=60)
    s.add_argument("--start", default="2024-01-01")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_generate)


def cmd_ingest_cdnow(args) -> int:
    manifests = ingest_cdnow(Config.from_args(args).lake(), args.ds_from, args.ds_to)
    rows = sum(m.rows for m in manifests)
    print(
        f"raw_events: {len(manifests)} partitions, {rows} rows "
        f"({manifests[0].ds}..{manifests[-1].ds}) in {Config.from_args(args).lake().path('raw_events')}"
    )
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
    print(
        f"raw_events: {len(manifests)} partitions, {sum(m.rows for m in manifests)} rows (generated, seed={args.seed})"
    )
    return 0
