"""``lockstep skew``: the nightly training-serving skew job."""

from __future__ import annotations

import json

from jobs.cli.common import add_model_arg, model_name
from jobs.config import Config
from jobs.skew.causes import CAUSES
from jobs.skew.job import SkewThresholdError, run_skew


def add_parsers(subparsers) -> None:
    """``lockstep skew --ds D [--model M] [--thresholds FILE.json] [--lookback-days N] [--late-days N] [--no-fail]``."""
    p = subparsers.add_parser("skew", help="compare serving_logs/ds=D with an offline recomputation; report causes")
    p.add_argument("--ds", required=True)
    add_model_arg(p, "the declared model whose serving log is compared (default: the repo's only/first model)")
    p.add_argument("--thresholds", help='JSON file: {"*": {"logic_skew_rate": 0}, "<feature>": {"psi": 0.25}}')
    p.add_argument("--lookback-days", type=int, default=3)
    p.add_argument("--late-days", type=int, default=3)
    p.add_argument("--no-fail", action="store_true", help="report breaches but exit 0")
    p.add_argument(
        "--allow-unvalidated",
        action="store_true",
        help="compare a serving-log day or raw days that did not pass `lockstep validate` (exploration: the "
        "report names them)",
    )
    p.set_defaults(func=_cmd_skew)


def _cmd_skew(args) -> int:
    cfg = Config.from_args(args)
    thresholds = None
    if args.thresholds:
        with open(args.thresholds) as f:
            thresholds = json.load(f)
    source = None
    try:
        from jobs.serving.model import RegistrySource

        source = RegistrySource(cfg, model_name(cfg, args))
    except ImportError:
        pass
    try:
        rep = run_skew(
            cfg,
            args.ds,
            model=model_name(cfg, args),
            model_source=source,
            thresholds=thresholds,
            lookback_days=args.lookback_days,
            late_days=args.late_days,
            fail=not args.no_fail,
            allow_unvalidated=args.allow_unvalidated,
        )
    except SkewThresholdError as exc:
        print(f"lockstep skew: FAILED: {exc}")
        return 1
    cc = rep.table.set_index("feature")[list(CAUSES)].fillna(0).astype(int).sum()
    h = rep.headline()
    print(
        f"skew ds={rep.ds}: {h['rows']} logged rows; skew (vs the training-mode recomputation): "
        f"{h['rows_mismatching']} rows, {h['mismatches']} of {h['values']} values; freshness (late data, not skew): "
        f"{h['rows_late']} rows, {h['late']} values; differences by cause: {cc.to_dict()}"
    )
    for line in rep.drift_alerts:
        print(f"ALERT: {line}")
    for line in rep.warnings:
        print(f"WARNING: {line}")
    print(f"report: {rep.html_path}")
    return 0
