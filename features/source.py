"""Sources declared as data: an event stream that lands day by day.

A :class:`Source` names its entity keys (int64 or string), its event id, event time and
ingestion time, its typed value columns with the checks they must pass, and how one day
lands (a :class:`FileLander` for CSV / Parquet / JSON Lines under an fsspec pattern, or a
:class:`ParserLander` naming a parser such as CDNOW's fixed-width text). Everything else
is derived from it: the raw table's Arrow schema (``raw_columns``), its data-quality suite,
the online store's columns. Pure data: nothing here reads a file.

Sources are versioned like feature sets: a changed schema is a new name.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Key and event-id types a source may declare.
KEY_TYPES = ("int64", "string")
#: Value column types (Arrow aliases).
VALUE_TYPES = ("int64", "double", "string", "bool", "timestamp[us, tz=UTC]")
TIMESTAMP = "timestamp[us, tz=UTC]"
FORMATS = ("csv", "parquet", "jsonl")
EPOCH_UNITS = ("s", "ms", "us", "ns")


class DeclarationError(ValueError):
    """A declaration that cannot work; the message names the declaration and the field."""

    def __init__(self, kind: str, name: str, field_: str, problem: str):
        self.kind, self.name, self.field, self.problem = kind, name, field_, problem
        super().__init__(f"{kind} {name!r}, field {field_!r}: {problem}")


@dataclass(frozen=True)
class Key:
    """An entity key column and its domain: ``min`` bounds integer keys (e.g. ids are >= 1, so 0 or
    a negative id is a placeholder from another system), ``allowed`` lists every legal value of a
    string key (e.g. the three airports a source covers)."""

    name: str
    type: str = "int64"
    min: int | None = None
    allowed: tuple[str, ...] | None = None
    #: A nullable key (e.g. a flight without a plane): its events belong to no entity of a set
    #: keyed by it, and a query without it gets that set's defaults.
    nullable: bool = False
    description: str = ""


@dataclass(frozen=True)
class Column:
    """A typed value column with the checks its values must pass.

    ``min``/``max`` bound numbers; ``allowed`` lists the known values of a string column, and
    ``max_unknown_share`` the share of a partition's rows that may hold another one (0: none — a
    new category is an upstream change; > 0: a few new values, e.g. a new route, are drift to
    tolerate, many are not);
    ``not_null_share`` is the least share of non-null values (1.0 = never null when
    ``nullable`` is False); ``null_when`` is a condition on the row's columns (``pandas.DataFrame.query``
    syntax, e.g. ``"cancelled == 1"``) under which the value is null, and only then: a null where it
    does not hold or a value where it does is an error (a feed that drops values, or one that fills
    values nobody measured), whatever the day's share of such rows — a share floor cannot tell a
    storm's cancellations from a feed that lost its delays; ``mean`` bounds the column mean of a
    partition.
    """

    name: str
    type: str = "double"
    nullable: bool = True
    min: float | None = None
    max: float | None = None
    allowed: tuple[str, ...] | None = None
    max_unknown_share: float = 0.0
    unique: bool = False
    not_null_share: float | None = None
    null_when: str | None = None
    mean: tuple[float, float] | None = None
    description: str = ""


@dataclass(frozen=True)
class FileLander:
    """One day lands as files of ``format`` at ``path`` (an fsspec path or URL with ``{ds}``; glob
    patterns allowed; ``package://<package>/<file>`` names a file shipped inside an installed
    Python package; with ``split_days`` one file without ``{ds}`` holds many days).

    ``columns`` maps raw-table columns to the file's columns (unmapped = same name);
    ``scale`` multiplies numeric columns (unit conversion, e.g. cents -> dollars = 0.01);
    timestamps without a zone are read in ``time_zone``; numeric epoch timestamps in
    ``epoch_unit``. ``ingested_at``: from a file column when mapped, else the event time
    plus ``ingest_latency_s``, else the end of the landing day. ``event_id``: from a file
    column when mapped, else derived from the event's content and its occurrence within
    its key (so a re-export gives the same ids).
    """

    format: str
    path: str
    columns: tuple[tuple[str, str], ...] = ()
    scale: tuple[tuple[str, float], ...] = ()
    time_zone: str = "UTC"
    epoch_unit: str | None = None
    ingest_latency_s: float | None = None
    #: ``path`` names one file holding many days (no ``{ds}``): each landing day keeps its rows.
    split_days: bool = False
    options: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        for name in ("columns", "scale", "options"):
            value = getattr(self, name)
            if isinstance(value, dict):
                object.__setattr__(self, name, tuple(sorted(value.items())))

    @property
    def column_map(self) -> dict[str, str]:
        return dict(self.columns)


@dataclass(frozen=True)
class ParserLander:
    """A day lands through a named parser (code in ``jobs/ingest/``) reading ``path``."""

    parser: str
    path: str = ""
    options: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Source:
    """An event stream: keys, ids, times, typed values, checks and how a day lands."""

    name: str
    keys: tuple[Key, ...]
    columns: tuple[Column, ...]
    lander: FileLander | ParserLander
    event_id: str = "event_id"
    event_id_type: str = "int64"
    event_time: str = "event_ts"
    ingested_at: str = "ingested_at"
    #: The span of days the data covers, when known (``(first_ds, last_ds)``): label horizons
    #: and training ranges are checked against it.
    span: tuple[str, str] | None = None
    #: Partition-level checks: least rows per day, and the least share of the previous day's rows.
    min_rows: int = 1
    min_share_of_previous: float | None = 0.2
    #: Row-count ceiling: at most this many times the median rows of the last ``recent_days``
    #: non-empty published days (a day delivered twice, a export of the wrong range); None: none.
    max_rows_vs_recent: float | None = 3.0
    recent_days: int = 7
    #: The largest share of a day's rows whose content (keys, event time, values) equals another row
    #: of the day: identical events on one day are legitimate (their ids differ by an occurrence
    #: number), a day delivered twice under new ids has every row twice (share 1.0); None: unchecked.
    max_duplicate_share: float | None = 0.5
    description: str = ""
    owner: str = ""

    def __post_init__(self) -> None:
        def bad(field_: str, problem: str) -> DeclarationError:
            return DeclarationError("source", self.name, field_, problem)

        if not self.keys:
            raise bad("keys", "a source needs at least one entity key")
        for k in self.keys:
            if k.type not in KEY_TYPES:
                raise bad("keys", f"key {k.name!r} has type {k.type!r}; expected one of {KEY_TYPES}")
            if k.min is not None and k.type != "int64":
                raise bad("keys", f"key {k.name!r}: min needs an int64 key")
            if k.allowed is not None and k.type != "string":
                raise bad("keys", f"key {k.name!r}: allowed values need a string key")
        if self.event_id_type not in KEY_TYPES:
            raise bad("event_id_type", f"{self.event_id_type!r}; expected one of {KEY_TYPES}")
        for c in self.columns:
            if c.type not in VALUE_TYPES:
                raise bad("columns", f"column {c.name!r} has type {c.type!r}; expected one of {VALUE_TYPES}")
            if c.allowed is not None and c.type != "string":
                raise bad("columns", f"column {c.name!r}: allowed values need a string column")
            if not 0 <= c.max_unknown_share < 1 or (c.max_unknown_share and c.allowed is None):
                raise bad(
                    "columns",
                    f"column {c.name!r}: max_unknown_share {c.max_unknown_share!r} needs allowed "
                    "values and a share in [0, 1)",
                )
        if self.max_rows_vs_recent is not None and not self.max_rows_vs_recent > 0:
            raise bad("max_rows_vs_recent", f"{self.max_rows_vs_recent!r}; expected a positive factor or None")
        if self.recent_days < 1:
            raise bad("recent_days", f"{self.recent_days!r}; expected at least 1")
        if self.max_duplicate_share is not None and not 0 <= self.max_duplicate_share < 1:
            raise bad("max_duplicate_share", f"{self.max_duplicate_share!r}; expected a share in [0, 1) or None")
        names = self.raw_column_names
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise bad("columns", f"column names used twice: {dupes}")
        for c in self.columns:
            if c.null_when is not None:
                if not c.nullable:
                    raise bad("columns", f"column {c.name!r}: null_when needs a nullable column")
                problem = _query_problem(c.null_when, names)
                if problem:
                    raise bad("columns", f"column {c.name!r}: null_when {c.null_when!r}: {problem}")
        if not isinstance(self.lander, (FileLander, ParserLander)):
            raise bad("lander", f"expected a FileLander or ParserLander, got {type(self.lander).__name__}")
        if isinstance(self.lander, FileLander):
            if self.lander.format not in FORMATS:
                raise bad("lander", f"format {self.lander.format!r}; expected one of {FORMATS}")
            if ("{ds}" in self.lander.path) == self.lander.split_days:
                raise bad(
                    "lander",
                    f"path {self.lander.path!r} has no {{ds}} placeholder"
                    if not self.lander.split_days
                    else f"path {self.lander.path!r}: split_days=True is for one file without {{ds}}",
                )
            if self.lander.epoch_unit is not None and self.lander.epoch_unit not in EPOCH_UNITS:
                raise bad("lander", f"epoch_unit {self.lander.epoch_unit!r}; expected one of {EPOCH_UNITS}")
            unknown = sorted(set(self.lander.column_map) - set(names))
            if unknown:
                raise bad("lander", f"maps unknown raw column(s) {unknown}; the source has {names}")
            unknown = sorted({c for c, _ in self.lander.scale} - {c.name for c in self.columns})
            if unknown:
                raise bad("lander", f"scales unknown value column(s) {unknown}")

    @property
    def table(self) -> str:
        """The lake table the source lands in: ``raw_events/<name>``, one partition per ingest day."""
        return f"raw_events/{self.name}"

    @property
    def key_names(self) -> tuple[str, ...]:
        return tuple(k.name for k in self.keys)

    def key(self, name: str) -> Key:
        for k in self.keys:
            if k.name == name:
                return k
        raise KeyError(name)

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    @property
    def value_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def raw_column_names(self) -> list[str]:
        return [n for n, _, _ in self.raw_columns()]

    def raw_columns(self) -> list[tuple[str, str, bool]]:
        """``(name, Arrow type, nullable)`` of the raw table, in order: id, keys, times, values."""
        cols = [(self.event_id, self.event_id_type, False)]
        cols += [(k.name, k.type, k.nullable) for k in self.keys]
        cols += [(self.event_time, TIMESTAMP, False), (self.ingested_at, TIMESTAMP, False)]
        cols += [(c.name, c.type, c.nullable) for c in self.columns]
        return cols

    def type_of(self, column: str) -> str:
        for name, type_, _ in self.raw_columns():
            if name == column:
                return type_
        raise KeyError(column)

    def spec_dict(self) -> dict:
        """What the source contributes to a feature set's fingerprint: its name and raw columns
        (not the lander: moving the files does not change a feature)."""
        return {"name": self.name, "columns": [list(c) for c in self.raw_columns()]}


def hours(n: float) -> float:
    """A window of ``n`` hours, in the days a :class:`features.spec.Feature` takes."""
    return n / 24.0


def _query_problem(condition: str, names: list[str]) -> str | None:
    """Why ``condition`` is not a row condition over columns ``names`` (None: it is one).

    Checked with ``ast`` (the DataFrame.query grammar is Python's expression grammar), not by
    evaluating it with pandas: declarations are imported when a DAG file is parsed, and pandas
    pulls in pyarrow."""
    import ast

    try:
        tree = ast.parse(condition, mode="eval")
    except SyntaxError as exc:
        return f"not an expression ({exc.msg})"
    unknown = sorted({n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} - set(names))
    if unknown:
        return f"names unknown column(s) {unknown}; the source has {names}"
    return None
