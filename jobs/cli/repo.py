"""``lockstep repo``: every declaration of the repo (sources, feature sets, models) with its fingerprint,
where it is declared, the tables and DAGs it produces — and the repo checked, like ``feast plan``.

A bad declaration exits 1 with the :class:`features.source.DeclarationError` message naming the
declaration and the field."""

from __future__ import annotations

import hashlib
import json
import sys

from jobs import orchestration as o
from jobs.config import Config


def add_parsers(subparsers) -> None:
    """``lockstep [--repo PATH_OR_PACKAGE] repo [-v] [--json]``."""
    s = subparsers.add_parser(
        "repo",
        help="list and check the declarations: fingerprints, origins, the tables and DAGs each produces",
        description=__doc__,
    )
    s.add_argument("-v", "--verbose", action="store_true", help="also every feature, column and condition")
    s.add_argument("--json", action="store_true", help="print the plan as JSON")
    s.set_defaults(func=cmd_repo)


def schema_fingerprint(source) -> str:
    """A source's schema fingerprint: sha256 of what it contributes to its feature sets' fingerprints (its
    name and raw columns, not the lander), first 16 hex digits."""
    digest = hashlib.sha256(json.dumps(source.spec_dict(), sort_keys=True).encode()).hexdigest()
    return f"{source.name}:{digest[:16]}"


def plan(repo) -> dict:
    """What the declarations produce, by kind and name (JSON-able)."""
    dags = o.dag_ids(repo)
    origin = repo.origins.get
    sources = {}
    for name, s in sorted(repo.sources.items()):
        sources[name] = {
            "origin": origin(f"source:{name}"),
            "fingerprint": schema_fingerprint(s),
            "keys": {k.name: k.type for k in s.keys},
            "event_id": f"{s.event_id} ({s.event_id_type})",
            "columns": {n: t for n, t, _ in s.raw_columns()},
            "lander": type(s.lander).__name__
            + f"({getattr(s.lander, 'parser', None) or getattr(s.lander, 'format', '')}"
            + (f", {s.lander.path}" if getattr(s.lander, "path", "") else "")
            + ")",
            "span": list(s.span) if s.span else None,
            "tables": [s.table],
            "feature_sets": [fs.name for fs in repo.feature_sets_of(s)],
            "dags": dags[f"source:{name}"],
        }
    feature_sets = {}
    for name, fs in sorted(repo.feature_sets.items()):
        feature_sets[name] = {
            "origin": origin(f"feature set:{name}"),
            "fingerprint": fs.fingerprint,
            "source": fs.source.name if fs.source is not None else None,
            "entity": f"{fs.entity} ({fs.entity_type})",
            "features": list(fs.feature_names),
            "tables": [o.snapshot_table_name(name)],
            "asset": o.asset_uri(o.snapshot_table_name(name)),
            "models": [m.name for m in repo.models_of(fs)],
            "dags": [o.features_dag_id(fs.source.name)] if fs.source is not None else [],
        }
    models = {}
    for name, m in sorted(repo.models.items()):
        q = m.queries
        queries = (
            f"entity snapshots of {q.key_name} ({q.source.name}), every {q.every}"
            + (f" on weekday {q.weekday}" if q.every == "week" else "")
            if hasattr(q, "key_name")
            else f"rows of {q.source.name} at {q.time}{q.offset_hours:+g}h"
        )
        label = m.label
        if hasattr(label, "horizon_days"):
            where = " and ".join(c.describe() for c in label.where)
            label_text = (
                f"an event of {label.source.name}{' with ' + where if where else ''} within {label.horizon_days:g} days"
            )
        else:
            label_text = "the query row matches any of: " + "; ".join(c.describe() for c in label.when)
        models[name] = {
            "origin": origin(f"model:{name}"),
            "fingerprint": m.fingerprint,
            "queries": queries,
            "label": label_text,
            "joins": [f"{j.feature_set.name} on {j.key_name}" for j in m.joins],
            "id_columns": [f"{c} ({t})" for c, t in m.id_columns],
            "tables": [m.labels_table, m.training_table, m.predictions_table, f"SQL {m.sql_table_name}"],
            "schedule": {
                "training": o.cron_of(m.schedule.training, m),
                "scoring": "on the Assets of " + ", ".join(o.snapshot_table_name(fs.name) for fs in m.feature_sets),
                "skew": o.cron_of(m.schedule.skew, m),
            },
            "dags": dags[f"model:{name}"],
        }
    return {"sources": sources, "feature_sets": feature_sets, "models": models}


def cmd_repo(args) -> int:
    cfg = Config.from_args(args)
    try:
        repo = cfg.repo()  # loads and checks: a DeclarationError exits 1 with its message (jobs.cli.main)
    except (ImportError, SyntaxError, TypeError, AttributeError, NameError) as exc:
        # a module of the repo that does not even import: name it, exit 1 like a bad declaration
        where = cfg.repo_package or "features.projects"
        print(
            f"lockstep repo: error: cannot load the declarations of {where}: {type(exc).__name__}: {exc}",
            file=sys.stderr,
        )
        return 1
    p = plan(repo)
    if args.json:
        print(json.dumps(p, indent=2))
        return 0
    where = cfg.repo_package or "features.projects (default; --repo or LOCKSTEP_REPO to change)"
    print(
        f"repo {where}: {len(p['sources'])} source(s), {len(p['feature_sets'])} feature set(s), "
        f"{len(p['models'])} model(s) — checked, no declaration error"
    )
    for kind, title in (("sources", "Sources"), ("feature_sets", "Feature sets"), ("models", "Models")):
        print(f"\n{title}")
        for name, d in p[kind].items():
            head = f"  {name}"
            if "fingerprint" in d:
                head += f"  fingerprint {d['fingerprint']}"
            print(head)
            print(f"    declared in  {d['origin']}")
            for field in ("keys", "entity", "source", "queries", "label", "joins", "id_columns", "lander", "span"):
                if field in d and d[field] is not None:
                    value = d[field]
                    if isinstance(value, dict):
                        value = ", ".join(f"{k} {v}" for k, v in value.items())
                    elif isinstance(value, list):
                        value = ", ".join(value) if field != "span" else "..".join(value)
                    print(f"    {field:<12} {value}")
            if args.verbose:
                for field in ("columns", "features"):
                    if field in d:
                        value = d[field]
                        value = (
                            ", ".join(f"{k} {v}" for k, v in value.items())
                            if isinstance(value, dict)
                            else ", ".join(value)
                        )
                        print(f"    {field:<12} {value}")
            print(f"    tables       {', '.join(d['tables'])}")
            if "schedule" in d:
                s = d["schedule"]
                print(
                    f"    schedule     training {s['training'] or 'manual'}; scoring {s['scoring']}; "
                    f"skew {s['skew'] or 'manual'}"
                )
            print(f"    dags         {', '.join(d['dags']) or '-'}")
    return 0
