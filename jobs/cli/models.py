"""``lockstep model list|promote|rollback|prune [NAME | --model M]``: the model registry's commands.

NAME is a registered name (e.g. a model's ``<model>_baseline``); ``--model`` names a declared model;
without either, the repo's default model."""

from __future__ import annotations

import json

from jobs.config import Config
from jobs.models.registry import PromotionRefused, Registry
from jobs.scoring.batch import referenced_models


def add_parsers(subparsers) -> None:
    """``lockstep model list|promote|rollback|prune [NAME]``."""
    m = subparsers.add_parser("model", help="registry: list versions, promote, rollback, prune")
    msub = m.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    for action, help_ in (
        ("list", "versions, aliases and holdback metrics"),
        ("promote", "challenger -> champion if it beats it on the same holdback"),
        ("rollback", "restore the previous champion"),
        ("prune", "retention: delete versions that are not kept"),
    ):
        a = msub.add_parser(action, help=help_)
        a.add_argument("name", nargs="?", default=None, help="registered name (default: --model)")
        a.add_argument("--model", default=None, help="a declared model (default: the repo's only or first)")
        if action == "promote":
            a.add_argument("--min-delta", type=float, default=0.0)
        if action == "prune":
            a.add_argument("--keep", type=int, default=3, help="top-k by holdback AUC to keep")
            a.add_argument("--sql-url", help="also keep models the published SQL table references")
            a.add_argument("--dry-run", action="store_true")
        a.set_defaults(func=_cmd_model)


def _cmd_model(args) -> int:
    cfg = Config.from_args(args)
    if args.name and args.model:
        raise ValueError("give a registered NAME or --model, not both")
    if not args.name:
        args.name = cfg.repo().model(args.model).name if args.model else cfg.repo().default_model().name
    registry = Registry.from_config(cfg)
    if args.model_command == "list":
        for v in registry.versions(args.name):
            print(
                f"v{v.version:<4} {','.join(v.aliases) or '-':<22} holdback AUC "
                f"{v.metrics.get('holdback_auc', float('nan')):.4f}  commit {v.tags.get('code_commit', '')[:12]}  "
                f"features {v.tags.get('feature_set_fingerprint', '')}"
            )
    elif args.model_command == "promote":
        try:
            info = registry.promote(args.name, min_delta=args.min_delta)
        except PromotionRefused as exc:
            first = registry.baseline_as_first_champion(args.name)
            if first is None:
                raise
            print(
                f"{exc}\n{args.name}: no champion yet, so the baseline it lost to "
                f"({first.tags.get('lockstep.adopted_from')}) is the champion, as v{first.version}"
            )
            return 0
        print(f"{args.name}: v{info.version} is the champion")
    elif args.model_command == "rollback":
        info = registry.rollback(args.name)
        print(f"{args.name}: rolled back, v{info.version} is the champion")
    else:
        report = registry.prune(
            args.name,
            references=referenced_models(cfg, args.sql_url, args.model),
            keep_top_k=args.keep,
            dry_run=args.dry_run,
        )
        print(json.dumps(report, indent=1))
    return 0
