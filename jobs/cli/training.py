"""``lockstep labels``, ``training-set``, ``train``, ``baseline`` and ``tune``: the training stage's commands.

``tune`` is the successive-halving search of LightGBM parameters, then the best trained and registered:
the search reads the train range (a stratified, seeded subsample) and scores on the valid range only;
the holdback is scored once, by the final training (``jobs.training.trainer.train_model``). See
``jobs.training.search``.

Every command works on one declared model (``--model``, default the repo's ``default_model()``): its
labels rule, cut-offs, feature sets and registered name come from the declaration.
"""

from __future__ import annotations

import contextlib
import json

from jobs.cli.common import add_model_arg, model_name
from jobs.config import Config
from jobs.models.registry import Registry
from jobs.training import BACKENDS, CONSTRUCT, baseline
from jobs.training.labels import build_labels, cutoffs_in, labels_table, latest_mature_cutoff
from jobs.training.spec import TrainSpec
from jobs.training.trainer import train_model
from jobs.training.training_set import build_training_set_range, build_training_sets


def model_of(cfg: Config, args):
    """The declared model a command works on: ``--model`` or the repo's default."""
    return cfg.repo().model(model_name(cfg, args))


def add_parsers(subparsers) -> None:
    """Every command of the training stage, in ``lockstep --help`` order."""
    add_labels_parser(subparsers)
    add_training_set_parser(subparsers)
    add_train_parser(subparsers)
    add_baseline_parser(subparsers)
    add_tune_parser(subparsers)


def add_labels_parser(subparsers) -> None:
    """``lockstep labels --from A [--to B] [--model M]``."""
    s = subparsers.add_parser("labels", help="build a model's labels labels/<model>/ds=<cut-off>")
    s.add_argument("--from", dest="ds_from", required=True, help="first day of the cut-off range")
    s.add_argument("--to", dest="ds_to", help="last day of the range (default: the last mature cut-off)")
    add_model_arg(s)
    s.add_argument(
        "--allow-unvalidated",
        action="store_true",
        help="read raw days that did not pass `lockstep validate` (exploration: the labels are marked as built "
        "from unvalidated input, and a training set built from them is refused without --allow-unvalidated)",
    )
    s.set_defaults(func=_cmd_labels)


def _cmd_labels(args) -> int:
    cfg = Config.from_args(args)
    model = model_of(cfg, args)
    to = args.ds_to or latest_mature_cutoff(cfg, model)
    if to is None:
        raise ValueError(f"no mature cut-off of {model.name}: land its sources first")
    manifests = build_labels(cfg, model, cutoffs_in(model, args.ds_from, to), allow_unvalidated=args.allow_unvalidated)
    for m in manifests:
        print(f"{m.table}/ds={m.ds}: {m.rows} rows")
    print(
        f"{len(manifests)} labels partition(s) in {labels_table(cfg.lake(), model).partition_path(manifests[-1].ds)}"
        if manifests
        else "no cut-offs in the range"
    )
    return 0


def add_training_set_parser(subparsers) -> None:
    """``lockstep training-set --from A [--to B] [--model M] [--per-cutoff]``: every labels cut-off in the range,
    in one engine pass per joined set (``build_training_set_range``), each cut-off its own validated partition."""
    s = subparsers.add_parser(
        "training-set", help="join a model's labels with its feature sets point in time -> training_sets/<model>/ds=C"
    )
    s.add_argument("--from", dest="ds_from", required=True)
    s.add_argument("--to", dest="ds_to", help="last cut-off (default: --from)")
    add_model_arg(s)
    s.add_argument("--no-validate", action="store_true", help="skip the training_sets suite")
    s.add_argument(
        "--per-cutoff",
        action="store_true",
        help="one build (one engine pass per joined set) per cut-off instead of one pass for the whole range",
    )
    s.add_argument(
        "--allow-unvalidated",
        action="store_true",
        help="read raw days that did not pass `lockstep validate` (exploration: the training set is marked as "
        "built from unvalidated input and never counts as validated)",
    )
    s.set_defaults(func=_cmd_training_set)


def _cmd_training_set(args) -> int:
    cfg = Config.from_args(args)
    model = model_of(cfg, args)
    to = args.ds_to or args.ds_from
    days = [d for d in labels_table(cfg.lake(), model).partitions() if args.ds_from <= d <= to]
    if not days:
        raise ValueError(f"no {model.labels_table} partitions in {args.ds_from}..{to}; run `lockstep labels` first")
    build = build_training_sets if args.per_cutoff else build_training_set_range
    for m in build(cfg, model, days, validate=not args.no_validate, allow_unvalidated=args.allow_unvalidated):
        print(f"{m.table}/ds={m.ds}: {m.rows} rows, content {m.content_fingerprint[:12]}")
    return 0


def add_train_parser(subparsers) -> None:
    """``lockstep train ...``."""
    s = subparsers.add_parser("train", help="train LightGBM from training-set partitions and register a challenger")
    for role in ("train", "valid", "holdback"):
        s.add_argument(
            f"--{role}", nargs=2, metavar=("FROM", "TO"), required=True, help=f"{role} cut-off range (inclusive)"
        )
    add_model_arg(s)
    s.add_argument("--backend", choices=BACKENDS, default="streamed")
    s.add_argument("--construct", choices=CONSTRUCT, default="inline")
    s.add_argument("--save-binary", action="store_true", help="train from LightGBM's binary dataset file")
    s.add_argument("--rounds", type=int, default=None, help="boosting rounds cap (default: the model's rounds)")
    s.add_argument("--patience", type=int, default=30)
    s.add_argument("--embargo-days", type=int, default=None, help="default: the model's label horizon")
    s.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="a LightGBM parameter")
    s.add_argument("--promote", action="store_true", help="promote the new challenger if it wins")
    s.add_argument(
        "--baseline",
        choices=("auto", "train", "off"),
        default="auto",
        help="the linear floor: compare with <model>_baseline on the same ranges if registered (auto), "
        "train one first if missing (train), or skip (off)",
    )
    s.set_defaults(func=_cmd_train)


def spec_from_args(cfg: Config, args, **extra) -> TrainSpec:
    """The TrainSpec of ``train``/``tune``'s shared flags (ranges, --model, --param, --rounds, --patience,
    --embargo-days); ``extra`` are the command's own fields."""
    return TrainSpec(
        tuple(args.train),
        tuple(args.valid),
        tuple(args.holdback),
        model_name=model_of(cfg, args).name,
        params=parse_params(args.param),
        num_boost_round=args.rounds,
        patience=args.patience,
        embargo_days=args.embargo_days,
        **extra,
    )


def _cmd_train(args) -> int:
    cfg = Config.from_args(args)
    spec = spec_from_args(
        cfg,
        args,
        backend=args.backend,
        construct=args.construct,
        save_binary=args.save_binary,
    )
    registry = Registry.from_config(cfg)
    out = train_model(cfg, spec, registry, baseline={"auto": None, "train": True, "off": False}[args.baseline])
    m = out.candidate.metrics
    print(f"trained {spec.model_name} on {m['train_rows']} rows ({spec.backend}), best iteration {m['best_iteration']}")
    print(f"  valid    AUC {m['valid_auc']:.4f}  PR-AUC {m['valid_pr_auc']:.4f}  log loss {m['valid_log_loss']:.4f}")
    print(
        f"  holdback AUC {m['holdback_auc']:.4f}  PR-AUC {m['holdback_pr_auc']:.4f}  "
        f"log loss {m['holdback_log_loss']:.4f}  ECE {m['holdback_ece']:.4f}"
    )
    print(f"registered {spec.model_name} v{out.registered.version} as challenger in {registry.uri}")
    if out.baseline:
        print(f"  floor: {out.baseline['summary']}")
    if out.champion_eval:
        print(f"  champion on the same holdback: AUC {out.champion_eval['auc']:.4f}")
    for note in out.notes:
        print(f"  note: {note}")
    if args.promote:
        info = registry.promote(spec.model_name)
        print(f"promoted v{info.version} to champion")
    return 0


def add_baseline_parser(subparsers) -> None:
    """``lockstep baseline --train A B --valid A B --holdback A B [--epochs N] [--embargo-days N]``."""
    s = subparsers.add_parser(
        "baseline", help="train the incremental linear baseline (Dask, out of core) and register it as <model>_baseline"
    )
    for role in ("train", "valid", "holdback"):
        s.add_argument(
            f"--{role}", nargs=2, metavar=("FROM", "TO"), required=True, help=f"{role} cut-off range (inclusive)"
        )
    add_model_arg(s, help="the model this baseline is the floor of (default: the repo's only model, else the first)")
    s.add_argument("--epochs", type=int, default=baseline.DEFAULT_EPOCHS)
    s.add_argument("--seed", type=int, default=baseline.DEFAULT_SEED)
    s.add_argument("--alpha", type=float, default=baseline.DEFAULT_SGD["alpha"], help="SGD L2 regularisation")
    s.add_argument("--embargo-days", type=int, default=None, help="default: the model's label horizon")
    s.set_defaults(func=_cmd_baseline)


def _cmd_baseline(args) -> int:
    cfg = Config.from_args(args)
    spec = TrainSpec(
        tuple(args.train),
        tuple(args.valid),
        tuple(args.holdback),
        model_name=model_of(cfg, args).name,
        embargo_days=args.embargo_days,
    )
    registry = Registry.from_config(cfg)
    out = baseline.train_baseline(cfg, spec, registry, epochs=args.epochs, seed=args.seed, sgd={"alpha": args.alpha})
    m = out.candidate.metrics
    print(
        f"trained baseline {out.candidate.name} on {m['train_rows']} rows in {out.fit.partitions} partitions, "
        f"{args.epochs} epoch(s)"
    )
    print(f"  valid    AUC {m['valid_auc']:.4f}  PR-AUC {m['valid_pr_auc']:.4f}  log loss {m['valid_log_loss']:.4f}")
    print(
        f"  holdback AUC {m['holdback_auc']:.4f}  PR-AUC {m['holdback_pr_auc']:.4f}  "
        f"log loss {m['holdback_log_loss']:.4f}  ECE {m['holdback_ece']:.4f}"
    )
    print(
        f"registered {out.candidate.name} v{out.registered.version} in {registry.uri}; "
        f"`lockstep train` with the same --train/--valid ranges compares LightGBM with it"
    )
    return 0


def add_tune_parser(subparsers) -> None:
    s = subparsers.add_parser(
        "tune",
        help="search LightGBM parameters (successive halving on Dask), then train "
        "and register the best as a challenger",
    )
    for role in ("train", "valid", "holdback"):
        s.add_argument(
            f"--{role}",
            nargs=2,
            metavar=("FROM", "TO"),
            required=True,
            help=f"{role} cut-off range (inclusive)" + ("; never read by the search" if role == "holdback" else ""),
        )
    add_model_arg(s)
    s.add_argument("--candidates", type=int, default=27, help="configurations (candidate budget; 0 = the defaults)")
    s.add_argument("--eta", type=int, default=3, help="keep the best 1/eta of each rung; rows x eta per rung")
    s.add_argument("--min-rows", type=int, default=10_000, help="training rows of the first rung (at least)")
    s.add_argument("--max-rows", type=int, default=300_000, help="rows of the stratified subsample (last rung)")
    s.add_argument("--max-seconds", type=float, default=3600.0, help="wall-clock budget of the search")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="boosting rounds cap, search fits and final training (default: the model's)",
    )
    s.add_argument("--patience", type=int, default=30)
    s.add_argument("--embargo-days", type=int, default=None, help="default: the model's label horizon")
    s.add_argument(
        "--param", action="append", default=[], metavar="KEY=VALUE", help="a fixed LightGBM parameter (not searched)"
    )
    s.add_argument("--no-train", action="store_true", help="only search and write the report")
    s.set_defaults(func=_cmd_tune)


def _cmd_tune(args) -> int:
    from jobs.training.search import tune_and_train

    cfg = Config.from_args(args)
    spec = spec_from_args(cfg, args)
    registry = None if args.no_train else Registry.from_config(cfg)
    out = tune_and_train(
        cfg,
        spec,
        registry,
        train=not args.no_train,
        progress=lambda m: print(m, flush=True),
        n_candidates=args.candidates,
        eta=args.eta,
        min_rows=args.min_rows,
        max_rows=args.max_rows,
        max_seconds=args.max_seconds,
        seed=args.seed,
    )
    r = out.tuning
    print(
        f"searched {r.n_configs} configurations ({r.n_fits} fits) against the validation range in {r.seconds:.0f}s; "
        f"best candidate {r.best_id}: valid AUC {r.best_auc:.4f} on {r.best_rows:,} rows"
    )
    if r.stopped_early:
        print(f"  stopped early: {r.stopped_early}")
    print(f"  params {json.dumps(r.best_params, sort_keys=True)}")
    print(f"  report: {out.report['summary.md']}")
    if out.train is not None:
        m = out.train.candidate.metrics
        print(
            f"trained on {m['train_rows']} rows, best iteration {m['best_iteration']}: valid AUC {m['valid_auc']:.4f}, "
            f"holdback AUC {m['holdback_auc']:.4f} (scored once)"
        )
        print(f"registered {spec.model_name} v{out.train.registered.version} as challenger in {registry.uri}")
        if out.train.champion_eval:
            print(f"  champion on the same holdback: AUC {out.train.champion_eval['auc']:.4f}")
        for note in out.train.notes:
            print(f"  note: {note}")
    return 0


def parse_params(pairs) -> dict:
    """``--param KEY=VALUE`` arguments as a dict; a value is JSON when it parses (numbers, booleans)."""
    params = {}
    for kv in pairs:
        k, _, v = kv.partition("=")
        with contextlib.suppress(ValueError):
            v = json.loads(v)
        params[k] = v
    return params
