"""``lockstep serve``, ``publish-serving-log`` and ``replay``: the serving path's commands."""

from __future__ import annotations

import os
import sys
from dataclasses import fields, replace
from pathlib import Path

from jobs.cli.common import add_model_arg, model_name
from jobs.config import Config
from jobs.serving.app import MODES, Settings, create_app
from jobs.serving.log import model_wal_dir, publish
from jobs.serving.metrics import MULTIPROC_ENV, clean_multiprocess_dir
from jobs.serving.peers import clean_peer_dir
from jobs.serving.replay import plan_day, replay


def add_parsers(subparsers) -> None:
    """Every command of the serving stage, in ``lockstep --help`` order."""
    add_serve_parser(subparsers)
    add_serve_keys_parser(subparsers)
    add_publish_log_parser(subparsers)
    add_replay_parser(subparsers)
    add_shadow_parser(subparsers)
    add_canary_parser(subparsers)


def add_serve_parser(subparsers) -> None:
    """``lockstep serve [--host H] [--port P] [--mode fresh|materialized] [--redis-url URL] [--wal-dir D]``."""
    p = subparsers.add_parser(
        "serve", help="run the reference serving service (POST /predict, /predict/batch; /health, /metrics)"
    )
    add_model_arg(p, "the declared model to serve (default: the repo's only model, else the first by name)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--mode", choices=MODES, help="default feature mode (default fresh)")
    p.add_argument("--redis-url", help="online store in Redis (default: embedded, loaded from the lake)")
    p.add_argument("--store-timeout-ms", type=float)
    p.add_argument(
        "--wal-dir",
        help="serving-log write-ahead root; the model's log goes to <root>/<model> (default .lockstep/serving_wal)",
    )
    p.add_argument("--fsync", choices=("interval", "always", "never"))
    p.add_argument("--model-path", help="a pickled Model instead of the registry's champion")
    p.add_argument(
        "--model-poll-s",
        type=float,
        help="read the registry's champion alias this often and swap to a new version without a restart "
        "(default $LOCKSTEP_SERVING_MODEL_POLL_S, else 30; 0: only POST /admin/reload and SIGHUP); every "
        "worker polls on its own",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="uvicorn worker processes (they share the WAL directory; /metrics sums every worker's series)",
    )
    p.add_argument(
        "--api-keys-file",
        help="API key hashes (lockstep serve-keys add); default $LOCKSTEP_SERVING_API_KEYS_FILE; none: open",
    )
    p.add_argument(
        "--allow-open",
        action="store_true",
        help="serve without API keys on a non-loopback --host (refused otherwise)",
    )
    p.add_argument(
        "--metrics-dir",
        help="prometheus_client multiprocess directory, emptied at start (default with --workers > 1: "
        "$PROMETHEUS_MULTIPROC_DIR, else <wal-dir>/../serving_metrics/<host>-<port>)",
    )
    p.set_defaults(func=_cmd_serve)


def _cmd_serve(args) -> int:
    import uvicorn

    settings = Settings.from_env(
        lake_root=getattr(args, "lake", None),
        model=args.model,
        mode=args.mode,
        redis_url=args.redis_url,
        store_timeout_ms=args.store_timeout_ms,
        wal_dir=args.wal_dir,
        fsync=args.fsync,
        model_path=args.model_path,
        model_poll_s=args.model_poll_s,
        api_keys_file=args.api_keys_file,
    )
    open_ = not settings.api_keys_file and not (settings.api_key_hashes or "").strip()
    if open_ and not _loopback(args.host) and not args.allow_open:
        raise ValueError(
            f"no API keys configured and --host {args.host} is reachable from other machines: add a key "
            "(lockstep serve-keys add --file F, then --api-keys-file F) or pass --allow-open"
        )
    metrics_dir = args.metrics_dir
    if metrics_dir is None and args.workers > 1:
        metrics_dir = os.environ.get(MULTIPROC_ENV) or str(
            Path(settings.wal_dir).parent / "serving_metrics" / f"{args.host}-{args.port}"
        )
    if metrics_dir is not None:
        # Before any worker starts (they inherit the environment, and prometheus_client picks its
        # multiprocess mode when a worker first imports it); stale files of a previous run go.
        os.environ[MULTIPROC_ENV] = str(clean_multiprocess_dir(metrics_dir))
    if args.workers > 1:
        # the workers share their canary guard and served-drift windows there (jobs.serving.peers):
        # one directory per run, emptied before they start (a previous run's claims must not stop anything)
        peers = settings.peers_dir or str(Path(metrics_dir) / "windows")
        settings = replace(settings, peers_dir=str(clean_peer_dir(peers)))
    if args.workers > 1:  # workers import the factory and read the settings from the environment
        os.environ.update(
            {
                f"LOCKSTEP_SERVING_{f.name.upper()}": str(getattr(settings, f.name))
                for f in fields(settings)
                if getattr(settings, f.name) is not None
            }
        )
        os.environ["LOCKSTEP_LAKE"] = settings.lake_root
        if getattr(args, "repo", None):
            os.environ["LOCKSTEP_REPO"] = args.repo
        uvicorn.run(
            "jobs.serving.app:app_from_env",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_level="info",
        )
    else:
        cfg = Config.from_args(args)
        uvicorn.run(create_app(settings, cfg=cfg), host=args.host, port=args.port, log_level="info")
    return 0


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def add_serve_keys_parser(subparsers) -> None:
    """``lockstep serve-keys add|list|revoke [--file F]``: the service's API keys (hashes in a file)."""
    p = subparsers.add_parser(
        "serve-keys", help="API keys of the serving service: add (prints the key once), list, revoke"
    )
    p.add_argument(
        "--file",
        default=os.environ.get("LOCKSTEP_SERVING_API_KEYS_FILE"),
        help="the key file (default $LOCKSTEP_SERVING_API_KEYS_FILE)",
    )
    sub = p.add_subparsers(dest="action", required=True)
    add = sub.add_parser("add", help="generate a key, append its hash to the file, print the key once")
    add.add_argument("--id", help="the key's id (default key-<UTC time>)")
    sub.add_parser("list", help="the key ids in the file")
    rev = sub.add_parser("revoke", help="remove a key's line (running services drop it within their reload interval)")
    rev.add_argument("key_id")
    p.set_defaults(func=_cmd_serve_keys)


def _cmd_serve_keys(args) -> int:
    import sys

    from jobs.serving.auth import add_key, read_key_file, revoke_key

    if not args.file:
        raise ValueError("no key file: pass --file or set LOCKSTEP_SERVING_API_KEYS_FILE")
    if args.action == "add":
        key_id, key = add_key(args.file, args.id)
        print(f"added {key_id} to {args.file}; the key, shown this once (only its hash is kept):", file=sys.stderr)
        print(key)
        return 0
    if args.action == "list":
        for e in read_key_file(args.file):
            print(e.key_id)
        return 0
    if not revoke_key(args.file, args.key_id):
        print(f"{args.file}: no key {args.key_id!r}", file=sys.stderr)
        return 1
    print(f"revoked {args.key_id}", file=sys.stderr)
    return 0


def add_publish_log_parser(subparsers) -> None:
    """``lockstep publish-serving-log --ds D [--wal-dir ROOT]``: the model's WAL records of day D
    (``ROOT/<model>``) -> ``serving_logs/<model>/ds=D``."""
    p = subparsers.add_parser(
        "publish-serving-log", help="rotate a model's serving WAL records of a day into serving_logs/<model>/ds=D"
    )
    p.add_argument("--ds", required=True)
    p.add_argument("--wal-dir", default=".lockstep/serving_wal")
    add_model_arg(p)
    p.set_defaults(func=_cmd_publish)


def _cmd_publish(args) -> int:
    cfg = Config.from_args(args)
    model = _model(cfg, args)
    m = publish(cfg, model_wal_dir(args.wal_dir, model), model, args.ds)
    print(f"{model.serving_log_table}/ds={m.ds}: {m.rows} records, content {m.content_fingerprint[:12]}")
    return 0


def add_shadow_parser(subparsers) -> None:
    """``lockstep shadow --ds D [--model M] [--threshold T]``: champion vs shadowed challenger on the
    published serving log of day D (``jobs.serving.shadow_report``)."""
    p = subparsers.add_parser(
        "shadow", help="compare the champion and the challenger it shadowed on serving_logs/<model>/ds=D"
    )
    p.add_argument("--ds", required=True)
    add_model_arg(p)
    p.add_argument("--threshold", type=float, help="decision threshold: a score >= it is positive (default 0.5)")
    p.set_defaults(func=_cmd_shadow)


def _cmd_shadow(args) -> int:
    from jobs.serving.shadow_report import run_shadow_report

    cfg = Config.from_args(args)
    rep = run_shadow_report(cfg, model_name(cfg, args), args.ds, args.threshold)
    print(rep.table())
    print(f"report: {rep.html_path}")
    return 0


def add_canary_parser(subparsers) -> None:
    """``lockstep canary --model M (--share S | --next [--force] | --reset-breach)``: the challenger's
    canary stage, stored on its registry version (tag ``lockstep.canary_share``, its start in
    ``lockstep.canary_stage_at``); every service picks it up at its next poll. ``--next`` is the
    guarded step of the declared ramp (``jobs.serving.canary.advance_canary``): it holds, exit 1 with the
    reason, unless the stage lasted ``min_stage_minutes`` and the guards passed at this share."""
    p = subparsers.add_parser(
        "canary", help="set the share of entities the registry's challenger serves (the running services' next poll)"
    )
    add_model_arg(p)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--share", type=float, help="0..1 (0: shadow only), unguarded; starts a new stage")
    g.add_argument(
        "--next",
        action="store_true",
        help="the next step of the model's declared ramp, only while its guards hold (else exit 1 with the reason)",
    )
    g.add_argument(
        "--reset-breach",
        action="store_true",
        help="clear the record of a canary its guards stopped (the share stays 0 until set again)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="with --next: step without waiting for min_stage_minutes or a passing guard verdict "
        "(never past a recorded breach)",
    )
    p.set_defaults(func=_cmd_canary)


def _cmd_canary(args) -> int:
    from jobs.models.registry import Registry
    from jobs.serving.canary import advance_canary

    cfg = Config.from_args(args)
    name = model_name(cfg, args)
    if args.force and not args.next:
        print("--force goes with --next", file=sys.stderr)
        return 2
    reg = Registry.from_config(cfg)
    if args.reset_breach:
        info = reg.reset_canary_breach(name)
        print(f"{name} v{info.version} (challenger): canary breach record cleared; canary share 0")
        return 0
    if args.next:
        decision = advance_canary(cfg, cfg.repo().model(name), start=True, force=args.force)
        print(decision.describe(), file=sys.stdout if decision.advanced else sys.stderr)
        return 0 if decision.advanced else 1
    info = reg.set_canary_share(name, args.share)
    print(f"{name} v{info.version} (challenger): canary share {args.share:g}")
    return 0


def add_replay_parser(subparsers) -> None:
    """``lockstep replay --ds D --url URL [--requests N] [--seed S] [--mode M] [--concurrency C]``; the API
    key, if the service needs one, from ``LOCKSTEP_SERVING_API_KEY`` (not a flag: argv is visible to all)."""
    p = subparsers.add_parser(
        "replay", help="replay a day of requests from the model's source against a running service"
    )
    p.add_argument("--ds", required=True)
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--requests", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mode", choices=("fresh", "materialized"))
    p.add_argument("--concurrency", type=int, default=4)
    add_model_arg(p)
    p.set_defaults(func=_cmd_replay)


def _cmd_replay(args) -> int:
    cfg = Config.from_args(args)
    model = _model(cfg, args)
    src = model.queries.source
    raw = cfg.lake().table(src.table)
    first, last = raw.first_ds(), raw.last_ds()
    events = raw.read(first, last) if first is not None else raw.read(args.ds)
    plan = plan_day(events, args.ds, args.requests, args.seed, model, args.mode)
    res = replay(args.url, plan, args.concurrency, api_key=os.environ.get("LOCKSTEP_SERVING_API_KEY") or None)
    counts = res["status"].value_counts().to_dict()
    print(f"replayed {len(res)} requests for ds={args.ds}: status counts {counts}")
    return 0 if set(counts) == {200} else 1


def _model(cfg, args):
    return cfg.repo().model(model_name(cfg, args))
