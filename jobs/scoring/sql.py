"""Publish a model's ``<model.predictions_table>/ds=D`` as its SQL table ``model.sql_table_name``:
embedded SQLite by default, PostgreSQL when configured. The table's key is ``(ds, the model's id
columns..., role)``; id columns are BigInteger for int64 keys and String for string keys.

URL: the ``url`` argument, else ``$LOCKSTEP_SQL_URL``, else ``cfg.sql_url`` when the config has
one, else ``sqlite:///<lake>/_sql/lockstep.sqlite``. PostgreSQL:
``postgresql+psycopg://user:pass@host:5432/db``.

Publishing day D deletes D's rows and inserts the partition's rows in ONE transaction, so a
reader sees the old day or the new day, never a mix or a gap, and re-publishing is
idempotent. ``lockstep_published`` records which lake partition version (content
fingerprint) each day of the table holds.

Why SQLite as the embedded default (rather than DuckDB): it ships with Python (no new
dependency; DuckDB is only a benchmark extra here), SQLAlchemy's built-in dialect gives the
very same code path and transaction semantics as PostgreSQL (DuckDB needs the separate
``duckdb-engine``), and its consumers are applications looking predictions up by key and
analysts running modest queries — row lookups by primary key, where SQLite does well — while
in WAL mode readers in other processes keep reading while a day is replaced. DuckDB would scan
large aggregates faster, but it allows one writing process and blocks other processes from
opening the file meanwhile.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy as sa

from jobs.config import Config
from jobs.schemas import PREDICTION_COLUMNS, predictions_schema

SQL_ENV = "LOCKSTEP_SQL_URL"
PUBLISHED = "lockstep_published"


def columns(model) -> tuple[str, ...]:
    """Columns of the model's SQL table, in order: ``ds``, the id columns, ``role``, the rest."""
    ids = tuple(c for c, _ in model.id_columns)
    rest = tuple(c for c, _ in PREDICTION_COLUMNS if c != "role")
    return ("ds", *ids, "role", *rest)


def sql_url(cfg: Config, url: str | None = None) -> str:
    url = url or os.environ.get(SQL_ENV, "").strip() or getattr(cfg, "sql_url", None)
    if url:
        return url
    lake = cfg.lake()
    if not lake.is_local:
        raise ValueError(f"the lake {lake.root} is not local: set {SQL_ENV} to a SQLAlchemy URL")
    return f"sqlite:///{Path(lake.root).resolve() / '_sql' / 'lockstep.sqlite'}"


def make_engine(url: str) -> sa.Engine:
    """An engine for ``url``; SQLite files get WAL mode and a busy timeout."""
    u = sa.make_url(url)
    if u.get_backend_name() != "sqlite":
        return sa.create_engine(u, pool_pre_ping=True)
    if u.database and u.database != ":memory:":
        Path(u.database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(u, connect_args={"timeout": 30})

    @sa.event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn, _record):
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    return engine


def tables(model) -> tuple[sa.MetaData, sa.Table, sa.Table]:
    """The model's SQL table ``model.sql_table_name`` — primary key ``(ds, query id, role)``, then the
    join keys (null where their source key is nullable); BigInteger for int64 keys, String for string
    keys — and the ``lockstep_published`` book."""
    md = sa.MetaData()
    keys = [
        sa.Column(
            name,
            sa.BigInteger if type_ == "int64" else sa.String(200),
            primary_key=(i == 0),
            nullable=nullable,
        )
        for i, (name, type_, nullable) in enumerate(model.id_fields)
    ]
    preds = sa.Table(
        model.sql_table_name,
        md,
        sa.Column("ds", sa.Date, primary_key=True),
        *keys,
        sa.Column("role", sa.String(16), primary_key=True),
        sa.Column("score", sa.Float(precision=53), nullable=False),
        sa.Column("model_name", sa.String(200), nullable=False),
        sa.Column("model_version", sa.Integer, nullable=False),
        sa.Column("feature_set_fingerprint", sa.String(400), nullable=False),
        sa.Column("scored_at", sa.DateTime(timezone=True), nullable=False),
    )
    published = sa.Table(
        PUBLISHED,
        md,
        sa.Column("table_name", sa.String(200), primary_key=True),
        sa.Column("ds", sa.Date, primary_key=True),
        sa.Column("rows", sa.BigInteger, nullable=False),
        sa.Column("content_fingerprint", sa.String(64), nullable=False),
    )
    return md, preds, published


def _model(cfg: Config | None, model):
    """A model declaration from a declaration, a name (looked up in ``cfg``'s repo) or None (the default)."""
    if model is not None and not isinstance(model, str):
        return model
    from features.repo import load

    repo = cfg.repo() if cfg is not None else load()
    return repo.model(model) if model else repo.default_model()


def publish_predictions(
    cfg: Config,
    ds: str | dt.date,
    model=None,
    url: str | None = None,
    *,
    table_name: str | None = None,
    batch_rows: int = 50_000,
    allow_unvalidated: bool = False,
) -> dict:
    """Replace day ``ds`` of the SQL table of ``model`` (a declared model's name; default: the repo's
    default model) with ``<model.predictions_table>/ds=D``, in one transaction.

    ``table_name`` overrides the declared ``model.sql_table_name``. A predictions day that is not
    validated (``lockstep validate predictions``; never, when it was scored from unvalidated input) is
    refused with ``UnvalidatedPartitionError`` before the SQL table is touched, unless
    ``allow_unvalidated=True`` (exploration).
    """
    decl = _model(cfg, model)
    if table_name:
        decl = dataclasses.replace(decl, sql_table=table_name)
    ds = str(pd.Timestamp(str(ds)).date())
    day = dt.date.fromisoformat(ds)
    lake_table = cfg.lake().table(decl.predictions_table, predictions_schema(decl))
    manifest = lake_table.manifest(ds)
    if not allow_unvalidated:
        lake_table.require_validated(
            ds,
            dataset="predictions",
            override="to publish it anyway for exploration pass --allow-unvalidated (allow_unvalidated=True)",
        )
    cols = columns(decl)
    batches = lake_table.iter_batches(ds, columns=[c for c in cols if c != "ds"], batch_size=batch_rows)
    url = sql_url(cfg, url)
    shown = sa.make_url(url).render_as_string(hide_password=True)
    engine = make_engine(url)
    md, preds, published = tables(decl)
    name = decl.sql_table_name
    try:
        md.create_all(engine, checkfirst=True)
        rows = 0
        with engine.begin() as conn:
            conn.execute(sa.delete(preds).where(preds.c.ds == day))
            for df in batches:
                if len(df):
                    rows += insert_rows(conn, preds, day, df, decl)
            if rows != manifest.rows:
                raise ValueError(
                    f"read {rows} rows from {decl.predictions_table}/ds={ds}, its manifest lists {manifest.rows}"
                )
            conn.execute(sa.delete(published).where((published.c.table_name == name) & (published.c.ds == day)))
            conn.execute(
                sa.insert(published).values(
                    table_name=name, ds=day, rows=rows, content_fingerprint=manifest.content_fingerprint
                )
            )
    except sa.exc.SQLAlchemyError as exc:  # e.g. a duplicated key: say which day of which table it was
        exc.add_note(f"publishing {decl.predictions_table}/ds={ds} to SQL table {name} at {shown}")
        raise
    finally:
        engine.dispose()
    return {
        "url": shown,
        "table": name,
        "model": decl.name,
        "ds": ds,
        "rows": rows,
        "content_fingerprint": manifest.content_fingerprint,
    }


def insert_rows(conn, preds: sa.Table, day: dt.date, df: pd.DataFrame, model) -> int:
    """Insert one batch ``df`` of the model's predictions of ``day`` into ``preds`` on ``conn`` (inside
    the caller's transaction: COPY on PostgreSQL/psycopg, multi-row INSERTs elsewhere); returns the
    rows inserted."""
    scored = df["scored_at"].dt.tz_convert("UTC")
    cols = {}
    for name, type_, nullable in model.id_fields:
        values = df[name]
        if type_ == "int64" and not nullable:
            cols[name] = values.to_numpy(dtype=np.int64).tolist()
        else:  # None for a null key, never the string "nan"
            cols[name] = [None if pd.isna(v) else (int(v) if type_ == "int64" else str(v)) for v in values]
    cols.update(
        {
            "role": df["role"].astype(str).tolist(),
            "score": df["score"].to_numpy(dtype=np.float64).tolist(),
            "model_name": df["model_name"].astype(str).tolist(),
            "model_version": df["model_version"].to_numpy(dtype=np.int64).tolist(),
            "feature_set_fingerprint": df["feature_set_fingerprint"].astype(str).tolist(),
            "scored_at": list(scored.dt.to_pydatetime()),
        }
    )
    names = columns(model)
    n = len(df)
    if conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg":
        # COPY is several times faster than multi-row INSERTs, and runs in the same transaction.
        quoted = ", ".join(f'"{c}"' for c in names)
        cursor = conn.connection.driver_connection.cursor()
        with cursor.copy(f'COPY "{preds.name}" ({quoted}) FROM STDIN') as copy:
            for i in range(n):
                copy.write_row((day, *(cols[c][i] for c in names[1:])))
        return n
    records = [{"ds": day, **{c: cols[c][i] for c in names[1:]}} for i in range(n)]
    conn.execute(sa.insert(preds), records)
    return n


def read_day(url: str, ds: str | dt.date, model=None) -> pd.DataFrame:
    """Day ``ds`` of the SQL table of ``model`` (a declaration or its name; default: the default
    model), sorted by (id columns..., role)."""
    decl = _model(None, model)
    day = dt.date.fromisoformat(str(pd.Timestamp(str(ds)).date()))
    engine = make_engine(url)
    _, preds, _ = tables(decl)
    order = [preds.c[c] for c, _ in decl.id_columns] + [preds.c.role]
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(preds).where(preds.c.ds == day).order_by(*order)).mappings().all()
    finally:
        engine.dispose()
    return pd.DataFrame([dict(r) for r in rows], columns=list(columns(decl)))


def referenced_models(url: str, model=None) -> set[tuple[str, int]]:
    """(model_name, model_version) pairs present in the SQL table of ``model`` (a declaration or its
    name; default: the default model); empty if the table does not exist."""
    decl = _model(None, model)
    engine = make_engine(url)
    _, preds, _ = tables(decl)
    try:
        if not sa.inspect(engine).has_table(decl.sql_table_name):
            return set()
        with engine.connect() as conn:
            rows = conn.execute(sa.select(preds.c.model_name, preds.c.model_version).distinct()).all()
    finally:
        engine.dispose()
    return {(name, int(version)) for name, version in rows}
