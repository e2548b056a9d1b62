"""``lockstep tune``: successive-halving search of LightGBM parameters, then the best trained and registered.

The search reads the train range (a stratified, seeded subsample) and scores on the valid
range only; the holdback is scored once, by the final training (``jobs.train.train_model``).
See ``jobs.training.tune``.
"""
from __future__ import annotations

import json

from jobs.labels import HORIZON_DAYS
from jobs.train import DEFAULT_MODEL, TrainSpec, parse_params


def add_parsers(subparsers) -> None:
    s = subparsers.add_parser("tune", help="search LightGBM parameters (successive halving on Dask), then train "
                                           "and register the best as a challenger")
    for role in ("train", "valid", "holdback"):
        s.add_argument(f"--{role}", nargs=2, metavar=("FROM", "TO"), required=True,
                       help=f"{role} cut-off range (inclusive)" + ("; never read by the search" if role == "holdback"
                                                                   else ""))
    s.add_argument("--model", default=DEFAULT_MODEL)
    s.add_argument("--feature-set", default="customer_activity_v1")
    s.add_argument("--candidates", type=int, default=27, help="configurations (candidate budget; 0 = the defaults)")
    s.add_argument("--eta", type=int, default=3, help="keep the best 1/eta of each rung; rows x eta per rung")
    s.add_argument("--min-rows", type=int, default=10_000, help="training rows of the first rung (at least)")
    s.add_argument("--max-rows", type=int, default=300_000, help="rows of the stratified subsample (last rung)")
    s.add_argument("--max-seconds", type=float, default=3600.0, help="wall-clock budget of the search")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--rounds", type=int, default=500, help="boosting rounds cap (search fits and final training)")
    s.add_argument("--patience", type=int, default=30)
    s.add_argument("--embargo-days", type=int, default=HORIZON_DAYS)
    s.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="a fixed LightGBM parameter (not searched)")
    s.add_argument("--no-train", action="store_true", help="only search and write the report")
    s.set_defaults(func=_cmd_tune)


def _cmd_tune(args) -> int:
    from jobs.cli import _config
    from jobs.registry import Registry
    from jobs.training.tune import tune_and_train

    cfg = _config(args)
    spec = TrainSpec(tuple(args.train), tuple(args.valid), tuple(args.holdback), model_name=args.model,
                     feature_set=args.feature_set, params=parse_params(args.param), num_boost_round=args.rounds,
                     patience=args.patience, embargo_days=args.embargo_days)
    registry = None if args.no_train else Registry.from_config(cfg)
    out = tune_and_train(cfg, spec, registry, train=not args.no_train, progress=lambda m: print(m, flush=True),
                         n_candidates=args.candidates, eta=args.eta, min_rows=args.min_rows, max_rows=args.max_rows,
                         max_seconds=args.max_seconds, seed=args.seed)
    r = out.tuning
    print(f"searched {r.n_configs} configurations ({r.n_fits} fits) against the validation range in {r.seconds:.0f}s; "
          f"best candidate {r.best_id}: valid AUC {r.best_auc:.4f} on {r.best_rows:,} rows")
    if r.stopped_early:
        print(f"  stopped early: {r.stopped_early}")
    print(f"  params {json.dumps(r.best_params, sort_keys=True)}")
    print(f"  report: {out.report['summary.md']}")
    if out.train is not None:
        m = out.train.candidate.metrics
        print(f"trained on {m['train_rows']} rows, best iteration {m['best_iteration']}: valid AUC {m['valid_auc']:.4f}, "
              f"holdback AUC {m['holdback_auc']:.4f} (scored once)")
        print(f"registered {spec.model_name} v{out.train.registered.version} as challenger in {registry.uri}")
        if out.train.champion_eval:
            print(f"  champion on the same holdback: AUC {out.train.champion_eval['auc']:.4f}")
        for note in out.train.notes:
            print(f"  note: {note}")
    return 0


__all__ = ["add_parsers"]
