"""Quarantine follows lineage: withdrawing a partition withdraws everything published from it.

Every manifest records the partitions it was built from (``Manifest.inputs``: ``"<table>/ds=D"`` or a
range ``"<table>/ds=A..B"`` -> fingerprint). A partition *depends on* ``(table, ds)`` when one of its
input keys names ``table`` and a range holding ``ds``. A snapshot of day D reads every raw day up to
D (``raw/ds=<first>..D``), so **one quarantined raw day withdraws every later snapshot that read it**,
and, transitively, the predictions scored from those snapshots, the training sets built from that
range, and so on.

:func:`withdraw` quarantines the partition (unless it is already quarantined, e.g. by a failed
validation), then every published partition that depends on it, directly or not, each with the
reason ``input <table>/ds=<ds> quarantined: <reason>``; it deletes the SQL rows of every withdrawn
predictions day (``jobs.scoring.sql``: those days of the model's SQL table and their
``lockstep_published`` rows, in ONE transaction) and sends ONE alert naming everything withdrawn.

A candidate staged over a validated version (``Table.pending``) whose inputs cover the withdrawn
partition or one of its withdrawn dependents is **rejected** too (moved to the quarantine with the same
reason), so a later validation cannot promote a version built from withdrawn input. The withdrawn
partition's own candidate (a re-delivery of that day) is left pending: it is judged by its own validation.

Order: the SQL rows go first, then the dependents' candidates, then the dependents, then the partition
itself, so a failure midway leaves the partition published and running the same withdrawal again finishes it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from jobs.lake import CANDIDATE, MANIFEST, QUARANTINE, Lake, LakeError, check_ds, parse_input_key


@dataclass
class Withdrawal:
    """What one withdrawal did."""

    table: str
    ds: str
    reason: str
    #: The quarantine URL of the partition itself (None: it was already quarantined).
    quarantine: str | None = None
    #: ``"table/ds=D"`` -> quarantine URL of each dependent withdrawn, in withdrawal order.
    withdrawn: dict[str, str] = field(default_factory=dict)
    #: ``"table/ds=D"`` -> quarantine URL of each pending candidate rejected because it was built from
    #: a withdrawn partition.
    rejected: dict[str, str] = field(default_factory=dict)
    #: ``"sql_table ds=D"`` -> SQL rows deleted.
    sql_rows: dict[str, int] = field(default_factory=dict)
    alert: dict | None = None

    def describe(self) -> str:
        """The lines a person reads (the alert's reason, the CLI's output)."""
        lines = [f"{self.table}/ds={self.ds} quarantined: {self.reason}"]
        if self.quarantine:
            lines.append(f"  moved to {self.quarantine}")
        if self.withdrawn:
            lines.append(f"withdrew {len(self.withdrawn)} partition(s) built from it:")
            lines += [f"  {key} -> {url}" for key, url in self.withdrawn.items()]
        else:
            lines.append("no published partition was built from it")
        if self.rejected:
            lines.append(f"rejected {len(self.rejected)} pending candidate(s) built from withdrawn input:")
            lines += [f"  {key} -> {url}" for key, url in self.rejected.items()]
        for key, n in self.sql_rows.items():
            lines.append(f"deleted {n} SQL row(s) of {key}")
        return "\n".join(lines)


def tables(lake: Lake) -> list[str]:
    """Names of the lake's tables that have at least one published partition (``_``-prefixed
    directories — the quarantine, alerts, SQL, reports — are not tables)."""
    return sorted({name for name, _ in _partitions_with(lake, MANIFEST)})


def _partitions_with(lake: Lake, marker: str) -> list[tuple[str, str]]:
    """``(table, ds)`` of every partition directory of the lake holding the file ``marker``."""
    root = lake.fs_root.rstrip("/")
    out = []
    for path in lake.fs.glob(f"{root}/**/ds=*/{marker}"):
        rel = path[len(root) + 1 :] if path.startswith(root + "/") else path
        parts = rel.split("/")
        names, ds = parts[:-2], parts[-2].removeprefix("ds=")  # drop ds=.../<marker>
        if names and not any(p.startswith("_") for p in names) and names[0] != QUARANTINE:
            out.append(("/".join(names), ds))
    return out


def dependents(lake: Lake, table: str, ds: str) -> list[tuple[str, str]]:
    """Every published partition built, directly or transitively, from ``table/ds=ds``: ``(table, ds)``
    pairs, each after the partitions it was built from."""
    ds = check_ds(ds)
    published = []  # (table, ds, [(input table, lo, hi)])
    for name in tables(lake):
        t = lake.table(name)
        for d in t.partitions():
            inputs = [p for p in map(parse_input_key, t.manifest(d).inputs) if p is not None]
            if inputs:
                published.append((name, d, inputs))
    found: list[tuple[str, str]] = []
    frontier = [(table, ds)]
    seen = {(table, ds)}
    while frontier:
        src_table, src_ds = frontier.pop(0)
        for name, d, inputs in published:
            if (name, d) in seen:
                continue
            if any(t == src_table and lo <= src_ds <= hi for t, lo, hi in inputs):
                seen.add((name, d))
                found.append((name, d))
                frontier.append((name, d))
    return found


def pending_dependents(lake: Lake, withdrawn: list[tuple[str, str]]) -> list[tuple[str, str, str]]:
    """``(table, ds, write id)`` of every pending candidate whose inputs cover one of the ``withdrawn``
    ``(table, ds)`` pairs. The first pair is the withdrawn partition itself: its own candidate (a
    re-delivery of the day) is not one of them, its own validation judges it."""
    out = []
    for name, d in sorted(_partitions_with(lake, CANDIDATE)):
        if withdrawn and (name, d) == withdrawn[0]:
            continue
        staged = lake.table(name).pending(d)
        if staged is None:
            continue
        inputs = [p for p in map(parse_input_key, staged.manifest.inputs) if p is not None]
        if any(it == wt and lo <= wd <= hi for it, lo, hi in inputs for wt, wd in withdrawn):
            out.append((name, d, staged.write_id))
    return out


def withdraw(
    cfg,
    table: str,
    ds: str | dt.date,
    reason: str,
    *,
    sql_url: str | None = None,
    notifier=None,
    alert: bool = True,
) -> Withdrawal:
    """Quarantine ``table/ds=ds`` (if still published) and everything published from it; delete the
    SQL rows of the withdrawn predictions days in one transaction; send one alert (``alert=False``:
    none, the caller reports). See the module docstring."""
    lake = cfg.lake()
    ds = check_ds(ds)
    root = lake.table(table)
    published = root.exists(ds)
    if not published and not root.quarantined(ds):
        raise LakeError(f"table {table!r} ds={ds}: no published or quarantined partition to withdraw")
    result = Withdrawal(table=table, ds=ds, reason=reason)
    deps = dependents(lake, table, ds)
    result.sql_rows = _delete_sql_rows(cfg, deps, sql_url)
    because = f"input {table}/ds={ds} quarantined: {reason}"
    for name, d, write in pending_dependents(lake, [(table, ds), *deps]):
        result.rejected[f"{name}/ds={d}"] = lake.table(name).reject(d, write, because)
    for name, d in deps:
        result.withdrawn[f"{name}/ds={d}"] = lake.table(name).quarantine(d, because)
    if published:
        result.quarantine = root.quarantine(ds, reason)
    if alert:
        result.alert = send_alert(lake, result, notifier)
    return result


_NOTE = (
    "withdrawn: every partition whose inputs cover this day, ranges included: a build that read a range "
    "through a later day read this one too (details.withdrawn lists them all)"
)


def send_alert(lake: Lake, result: Withdrawal, notifier=None) -> dict:
    """The one alert of a withdrawal, naming everything withdrawn."""
    from jobs.alerts import Alert, Notifier

    n = len(result.withdrawn)
    return (notifier or Notifier.for_lake(lake)).send(
        Alert(
            title=f"{result.table}/ds={result.ds} quarantined; {n} partition(s) built from it withdrawn",
            where=f"{result.table}/ds={result.ds}",
            reason=_NOTE + "\n" + result.describe(),  # the note first: a long reason is cut to its head
            what="lineage withdrawal",
            partition=f"{result.table}/ds={result.ds}",
            quarantine=result.quarantine,
            details={
                "withdrawn": list(result.withdrawn),
                "rejected_candidates": list(result.rejected),
                "sql_rows_deleted": result.sql_rows,
            },
        )
    )


def _delete_sql_rows(cfg, deps: list[tuple[str, str]], url: str | None) -> dict[str, int]:
    """Delete the SQL rows of every withdrawn predictions day (one transaction for all of them)."""
    by_table = {}
    for m in cfg.repo().models.values():
        by_table.setdefault(m.predictions_table, []).append(m)
    days = [(m, d) for name, d in deps for m in by_table.get(name, [])]
    if not days:
        return {}
    import sqlalchemy as sa

    from jobs.scoring import sql

    url = sql.sql_url(cfg, url)
    u = sa.make_url(url)
    if u.get_backend_name() == "sqlite" and u.database and u.database != ":memory:":
        import os

        if not os.path.exists(u.database):
            return {}  # nothing was ever published
    engine = sql.make_engine(url)
    deleted: dict[str, int] = {}
    try:
        existing = set(sa.inspect(engine).get_table_names())
        with engine.begin() as conn:
            for m, d in days:
                _, preds, book = sql.tables(m)
                day = dt.date.fromisoformat(d)
                if preds.name in existing:
                    n = conn.execute(sa.delete(preds).where(preds.c.ds == day)).rowcount
                    deleted[f"{preds.name} ds={d}"] = int(n or 0)
                if book.name in existing:
                    conn.execute(sa.delete(book).where((book.c.table_name == preds.name) & (book.c.ds == day)))
    finally:
        engine.dispose()
    return deleted
