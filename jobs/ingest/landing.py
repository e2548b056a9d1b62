"""Landing: one ingest partition of a declared source's raw table per day.

``land(cfg, source, ds_from, ds_to=None)`` lands every day of ``[ds_from, ds_to]`` into
``source.table`` (``raw_events/<source>``), in ``jobs.schemas.raw_schema(source)``, each day
published atomically by the lake with its producer and inputs (the files read and their sha256).
Every day of the range is read and checked BEFORE any is written: a missing or garbled input
raises :class:`LandingError` (naming the file, the column and the rule it broke) and nothing of
the range is written. CSV and JSON Lines files (plain, gzip, bz2, xz) are decompressed and decoded
here first, so a byte that is not in the declared encoding, a CSV record whose field count differs
from the header's, or a truncated compressed file is named by its line (``decompressed``,
``decoded``, ``check_field_counts``; the CDNOW parser uses them too).

How a day lands is declared by the source's lander (``features.source``):

``FileLander`` (CSV, Parquet, JSON Lines)
    - files at ``lander.path.format(ds=ds)``: any fsspec path or URL, glob patterns allowed
      (every matching file, in sorted order), ``package://<package>/<file>`` for a file shipped
      inside an installed package; with ``split_days`` one file (no ``{ds}``) holds many days and
      each day keeps the rows whose ingestion time falls on it;
    - ``columns`` maps raw columns to file columns (unmapped: the same name); every key, event
      time and value column must be in the file (a missing one is an error, nullable or not);
    - ``scale`` multiplies numeric columns (a scale ``1/n`` with integral ``n`` divides by ``n``,
      so cents -> dollars is exact: 1234 * 0.01 -> 12.34);
    - timestamps: strings with an offset are converted to UTC; naive ones are read as wall
      clock in ``time_zone`` (zoneinfo; a non-existent or ambiguous local time is an error), then
      converted to UTC; numbers are epoch values in ``epoch_unit``; Parquet timestamps likewise
      (naive = ``time_zone``);
    - ``ingested_at``: the mapped/same-named file column when the file has it, else the event time
      plus ``ingest_latency_s``, else the end of the landing day (23:59:59.999999 UTC);
    - ``event_id``: the mapped/same-named file column when the file has it, else DERIVED (see
      :func:`derived_event_ids`).
    ``options``: reader options (CSV: ``sep``, ``comment``, ``skiprows``, ``encoding``, ``quotechar``,
    ``compression``, ``null_values`` — comma-separated strings read as null besides the empty field,
    e.g. ``"NA"``; all formats: ``compression``).

``ParserLander``
    a named parser: ``PARSERS`` maps a name to ``"module:function"`` (``"cdnow"`` ->
    ``jobs.ingest.cdnow:parse_days``); a name not listed is looked up as
    ``jobs.ingest.<name>:parse_days``. A parser is called as
    ``parse_days(source, lander, days, path=None) -> Parsed`` and returns the producer fields, the
    inputs and an iterable of ``(ds, frame)`` with one frame per requested day, in the source's raw
    columns.

Derived event ids
    ``hash(keys, event time, values, occurrence)`` where occurrence is the row's number (0, 1, ...)
    among the rows of the same landing day with exactly that content, in file order. So the id
    depends on what the event is, not on where it sits in the export: a re-export with a header
    line, a blank line, a comment or its rows in another order gives every event the same id, and
    two identical purchases on one day get two ids. Hash: pandas' siphash of the canonical values
    (``pd.util.hash_pandas_object`` with a fixed key; int64 ids are the 63-bit non-negative part,
    string ids its 16 hex digits).
"""

from __future__ import annotations

import bz2
import csv
import datetime as dt
import gzip
import hashlib
import importlib
import importlib.util
import io
import lzma
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from jobs.lake import Manifest, day_range
from jobs.schemas import raw_schema, to_raw

#: Named parsers of ParserLander sources: name -> "module:function".
PARSERS: dict[str, str] = {"cdnow": "jobs.ingest.cdnow:parse_days"}

_DAY_US = 86_400_000_000
_HASH_KEY = "lockstep-event-1"
_CSV_OPTIONS = {"sep", "comment", "skiprows", "encoding", "quotechar", "compression", "decimal", "thousands"}
#: Compressions decompressed here (so a truncated file is reported by line); others are left to pandas.
_STREAMS = {"gzip": gzip.open, "bz2": bz2.open, "xz": lzma.open}


class LandingError(ValueError):
    """An input that cannot land: names the source, the file, the column and the rule."""

    def __init__(self, source: str, file: str, problem: str, column: str | None = None, rule: str | None = None):
        self.source, self.file, self.column, self.rule, self.problem = source, file, column, rule, problem
        where = f"source {source!r}, file {file}"
        if column is not None:
            where += f", column {column!r}"
        if rule is not None:
            where += f" (rule: {rule})"
        super().__init__(f"{where}: {problem}")


@dataclass
class Parsed:
    """What a parser returns: producer fields, inputs (name -> fingerprint), ``(ds, frame)`` days."""

    days: Iterable[tuple[str, pd.DataFrame]]
    producer: dict = field(default_factory=dict)
    inputs: dict = field(default_factory=dict)
    #: Inputs of each day when they differ by day (a file per day): ds -> {name: fingerprint}.
    inputs_by_day: dict = field(default_factory=dict)


def land(cfg, source, ds_from, ds_to=None, *, path: str | None = None) -> list[Manifest]:
    """Land every day of ``[ds_from, ds_to]`` (``ds_to`` None: one day) of ``source`` (a name in
    ``cfg.repo()`` or a Source) into ``source.table``; ``path`` replaces the lander's path (e.g. a
    re-export). Returns the manifests in day order."""
    src = cfg.repo().source(source) if isinstance(source, str) else source
    days = day_range(ds_from, ds_to)
    lander = src.lander
    if hasattr(lander, "parser"):
        parsed = parser_for(lander.parser)(src, lander, days, path=path)
        producer = {"job": "land", "source": src.name, "parser": lander.parser, **parsed.producer}
    else:
        parsed = read_file_days(src, lander, days, path=path)
        producer = {"job": "land", "source": src.name, "format": lander.format, **parsed.producer}
    tables = []
    for ds, frame in parsed.days:
        try:
            tables.append((ds, to_raw(src, frame)))
        except ValueError as exc:
            where = ", ".join(parsed.inputs_by_day.get(ds, parsed.inputs)) or "?"
            raise LandingError(src.name, where, str(exc), rule="raw schema") from None
    if [d for d, _ in tables] != days:
        raise ValueError(f"source {src.name!r}: the lander gave days {[d for d, _ in tables]}, expected {days}")
    table = cfg.lake().table(src.table, raw_schema(src))
    return [
        table.write_partition(ds, t, producer=producer, inputs=parsed.inputs_by_day.get(ds, parsed.inputs))
        for ds, t in tables
    ]


def parser_for(name: str) -> Callable[..., Parsed]:
    """The parser registered as ``name`` (``PARSERS``, else ``jobs.ingest.<name>:parse_days``)."""
    target = PARSERS.get(name, f"jobs.ingest.{name}:parse_days")
    module, _, func = target.partition(":")
    try:
        return getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError):
        raise KeyError(f"unknown parser {name!r} ({target} not found); registered: {sorted(PARSERS)}") from None


# ---- files --------------------------------------------------------------------------------------
def read_file_days(src, lander, days: list[str], *, path: str | None = None) -> Parsed:
    """Read the FileLander inputs of ``days`` into raw-column frames (nothing written)."""
    pattern = path or lander.path
    inputs: dict[str, str] = {}
    by_day: dict[str, dict[str, str]] = {}
    out: list[tuple[str, pd.DataFrame]] = []
    if lander.split_days:
        frames = [_read_file(src, lander, f, data, None, inputs) for f, data in _open(src, pattern)]
        whole = pd.concat(frames, ignore_index=True) if frames else None
        if whole is None:
            raise LandingError(src.name, pattern, "no file matches", rule="lander.path")
        day = whole[src.ingested_at].dt.strftime("%Y-%m-%d")
        for ds in days:
            part = whole.loc[(day == ds).to_numpy()].reset_index(drop=True)
            out.append((ds, _with_ids(src, lander, part, pattern)))
    else:
        for ds in days:
            day_inputs = by_day.setdefault(ds, {})
            opened = _open(src, pattern.format(ds=ds))
            frames = [_read_file(src, lander, f, data, ds, day_inputs) for f, data in opened]
            part = pd.concat(frames, ignore_index=True)
            out.append((ds, _with_ids(src, lander, part, pattern.format(ds=ds))))
    return Parsed(out, producer={"path": pattern}, inputs=inputs, inputs_by_day=by_day)


def resolve_path(path: str) -> str:
    """``package://<package>/<file>`` -> the file inside the installed package; anything else as is."""
    if not path.startswith("package://"):
        return path
    package, _, rest = path[len("package://") :].partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{path}: package {package!r} is not installed")
    return str(Path(list(spec.submodule_search_locations)[0]) / rest)


def _open(src, path: str) -> list[tuple[str, bytes]]:
    import fsspec

    try:
        url = resolve_path(path)
    except FileNotFoundError as exc:
        raise LandingError(src.name, path, str(exc), rule="lander.path") from None
    fs, fs_path = fsspec.core.url_to_fs(url)
    if any(ch in fs_path for ch in "*?["):
        found = sorted(fs.glob(fs_path))
        if not found:
            raise LandingError(src.name, path, "no file matches the pattern", rule="lander.path")
    else:
        found = [fs_path]
    out = []
    for f in found:
        try:
            out.append((f if url == fs_path or len(found) > 1 else url, fs.cat_file(f)))
        except FileNotFoundError:
            raise LandingError(src.name, url, "file not found", rule="lander.path") from None
    return out


def _read_file(src, lander, name: str, data: bytes, ds: str | None, inputs: dict) -> pd.DataFrame:
    """One input file as a frame of the source's raw columns (event_id maybe missing: derived later)."""
    inputs[name] = hashlib.sha256(data).hexdigest()
    opts = dict(lander.options)
    compression = opts.pop("compression", "infer")
    if compression == "infer":
        compression = {".gz": "gzip", ".bz2": "bz2", ".zip": "zip", ".xz": "xz", ".zst": "zstd"}.get(
            Path(name).suffix, None
        )
    if lander.format in ("csv", "jsonl") and (compression is None or compression in _STREAMS):
        try:  # read here, not by pandas, so an error names the line (pandas names none, or its chunk's)
            if compression is not None:
                data, compression = decompressed(data, compression), None
            text = decoded(data, opts.get("encoding", "utf-8"), "; declare the file's encoding in the lander's options")
            if lander.format == "csv":
                check_field_counts(text, opts)
        except ValueError as exc:
            raise LandingError(src.name, name, str(exc), rule="lander.format") from None
    try:
        if lander.format == "csv":
            kw = {k: (int(v) if k == "skiprows" else v) for k, v in opts.items() if k in _CSV_OPTIONS}
            nulls = [""] + [v for v in opts.get("null_values", "").split(",") if v]
            raw = pd.read_csv(
                io.BytesIO(data),
                dtype=str,
                keep_default_na=False,
                na_values=nulls,
                compression=compression,
                skip_blank_lines=True,
                **kw,
            )
        elif lander.format == "jsonl":
            raw = pd.read_json(io.BytesIO(data), lines=True, dtype=False, convert_dates=False, compression=compression)
        else:
            import pyarrow.parquet as pq

            raw = pq.read_table(io.BytesIO(data)).to_pandas()
    except Exception as exc:  # noqa: BLE001 - any reader error: the file is garbled
        raise LandingError(src.name, name, f"cannot be read as {lander.format}: {exc}", rule="lander.format") from None
    return _conform(src, lander, name, raw, ds)


def decompressed(data: bytes, compression: str) -> bytes:
    """``data`` decompressed as ``compression`` (``gzip``, ``bz2`` or ``xz``). A truncated file is a
    ``ValueError`` naming the last line it holds whole: a compressed stream keeps no index of its lines,
    so the line where the damage is, and how many lines are lost after it, cannot be known."""
    opener = _STREAMS[compression]
    try:
        with opener(io.BytesIO(data)) as f:
            return f.read()
    except EOFError:
        pass
    except (OSError, lzma.LZMAError) as exc:  # not such a file at all
        raise ValueError(f"cannot be decompressed as {compression}: {exc}") from None
    lines = size = 0
    with opener(io.BytesIO(data)) as f:
        try:
            for line in f:  # whole lines only: the cut one raises
                lines, size = lines + 1, size + len(line)
        except EOFError:
            pass
    raise ValueError(
        f"truncated {compression} file: its {len(data)} bytes end without the end-of-stream marker, after "
        f"line {lines} ({size} bytes decompressed); what followed (line {lines + 1} and any later ones) cannot "
        f"be known, a compressed stream keeps no index of its lines"
    )


def decoded(data: bytes, encoding: str = "utf-8", hint: str = "") -> str:
    """``data`` as text in ``encoding``; a byte that is not is a ``ValueError`` naming its line and column
    (counted in bytes; ASCII-compatible encodings), then ``hint``."""
    try:
        return data.decode(encoding)
    except LookupError:
        raise ValueError(f"unknown encoding {encoding!r} (lander option 'encoding')") from None
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - data.rfind(b"\n", 0, exc.start)
        raise ValueError(
            f"line {line}, byte {column}: {data[exc.start : exc.end]!r} is not {encoding} ({exc.reason}){hint}"
        ) from None


def check_field_counts(text: str, options: dict) -> None:
    """Every record of CSV ``text`` has as many fields as its header (pandas would pad a short row with
    nulls), and the header names each column once (pandas would rename a second ``x`` to ``x.1``); else a
    ``ValueError`` naming the line. ``options``: the lander's ``sep``, ``quotechar``,
    ``comment`` (the rest of a line from it is ignored, as pandas does) and ``skiprows``; a ``sep`` longer
    than one character is a regular expression, left to pandas."""
    sep = options.get("sep", ",")
    if len(sep) != 1:
        return
    comment = options.get("comment")
    skip = int(options.get("skiprows", 0))
    lines = text.splitlines(keepends=True)[skip:]
    if comment:
        lines = [line.split(comment, 1)[0] if comment in line else line for line in lines]
    reader = csv.reader(lines, delimiter=sep, quotechar=options.get("quotechar", '"'))
    expected = None
    for record in reader:
        if not record or (len(record) == 1 and not record[0].strip()):
            continue  # a blank or comment line (skipped by pandas too)
        if expected is None:
            expected = len(record)
            names = [f.strip() for f in record]
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice:
                raise ValueError(f"line {skip + reader.line_num}: the header names column(s) {twice} more than once")
        elif len(record) != expected:
            raise ValueError(f"line {skip + reader.line_num} has {len(record)} fields, the header has {expected}")


def _conform(src, lander, name: str, raw: pd.DataFrame, ds: str | None) -> pd.DataFrame:
    cmap = lander.column_map
    scale = dict(lander.scale)
    zone = _zone(src, lander, name)

    def col(c: str, required: bool = True):
        fc = cmap.get(c, c)
        if fc not in raw.columns:
            if not required:
                return None
            raise LandingError(
                src.name,
                name,
                f"file column {fc!r} is missing (the file has {list(raw.columns)})",
                column=c,
                rule=f"lander.columns[{c!r}]" if c in cmap else "a file column of the raw column's name",
            )
        return raw[fc]

    out: dict[str, object] = {}
    for k in src.keys:
        out[k.name] = _convert(src, name, k.name, col(k.name), k.type, k.nullable, zone, lander, None)
    out[src.event_time] = _convert(src, name, src.event_time, col(src.event_time), "ts", False, zone, lander, None)
    for c in src.columns:
        values = col(c.name)
        out[c.name] = _convert(src, name, c.name, values, c.type, c.nullable, zone, lander, scale.get(c.name))
    ev = out[src.event_time]
    ing = col(src.ingested_at, required=src.ingested_at in cmap)
    if ing is not None:
        out[src.ingested_at] = _convert(src, name, src.ingested_at, ing, "ts", False, zone, lander, None)
    elif lander.ingest_latency_s is not None:
        out[src.ingested_at] = ev + pd.Timedelta(microseconds=round(lander.ingest_latency_s * 1e6))
    else:
        if ds is not None:
            end = pd.Timestamp(ds, tz="UTC") + pd.Timedelta(microseconds=_DAY_US - 1)
            out[src.ingested_at] = pd.Series([end] * len(raw), dtype="datetime64[us, UTC]")
        else:  # split_days: the end of each event's own UTC day
            out[src.ingested_at] = ev.dt.floor("D") + pd.Timedelta(microseconds=_DAY_US - 1)
    eid = col(src.event_id, required=src.event_id in cmap)
    frame = pd.DataFrame({c: v for c, v in out.items()})
    if eid is not None:
        frame.insert(
            0, src.event_id, _convert(src, name, src.event_id, eid, src.event_id_type, False, zone, lander, None)
        )
    return frame


def _zone(src, lander, name: str) -> ZoneInfo:
    try:
        return ZoneInfo(lander.time_zone)
    except Exception:  # noqa: BLE001 - zoneinfo raises several types
        raise LandingError(src.name, name, f"unknown time zone {lander.time_zone!r}", rule="lander.time_zone") from None


def _bad(src, name: str, column: str, values: pd.Series, wrong: np.ndarray, rule: str) -> LandingError:
    rows = np.flatnonzero(wrong)
    sample = [values.iloc[i] for i in rows[:5]]
    return LandingError(
        src.name,
        name,
        f"{len(rows)} bad value(s), first at data row(s) {(rows[:5] + 1).tolist()}: {sample!r}",
        column=column,
        rule=rule,
    )


def _convert(src, name, column, values: pd.Series, type_: str, nullable: bool, zone, lander, scale) -> pd.Series:
    values = values.reset_index(drop=True)
    null = values.isna().to_numpy()
    if null.any() and not nullable:
        raise _bad(src, name, column, values, null, "not null (the declaration says nullable=False)")
    if type_ in ("ts", "timestamp[us, tz=UTC]"):
        return _timestamps(src, name, column, values, null, zone, lander)
    if type_ == "string":
        out = values.astype(object).where(~null, None)
        out = out.map(lambda v: v if v is None or isinstance(v, str) else _plain_str(v))
        return pd.Series(pd.array(out, dtype="str"))
    if type_ == "bool":
        if pd.api.types.is_bool_dtype(values.dtype):
            return values.astype("boolean")
        text = values.astype(object).where(~null, None).map(lambda v: None if v is None else str(v).strip().lower())
        mapping = {"true": True, "1": True, "t": True, "yes": True, "false": False, "0": False, "f": False, "no": False}
        wrong = ~null & ~text.isin(list(mapping)).to_numpy()
        if wrong.any():
            raise _bad(src, name, column, values, wrong, "bool (true/false/1/0)")
        return text.map(mapping).astype("boolean")
    num = pd.to_numeric(values, errors="coerce")
    wrong = ~null & num.isna().to_numpy()
    if wrong.any():
        raise _bad(src, name, column, values, wrong, f"a number ({type_})")
    finite = np.isfinite(num.to_numpy(dtype="float64", na_value=0.0))
    if (~null & ~finite).any():  # "inf" parses as a number; "nan" is refused above
        raise _bad(src, name, column, values, ~null & ~finite, f"a finite number ({type_})")
    num = num.astype("float64") if type_ == "double" or scale is not None else num
    if scale is not None:
        inv = 1.0 / scale
        num = num / round(inv) if scale < 1 and math.isclose(inv, round(inv), rel_tol=0, abs_tol=1e-9) else num * scale
    if type_ == "int64":
        f = num.astype("float64").to_numpy()
        # beyond int64, a cast would wrap around (or overflow); compare exactly where the values are integers
        if pd.api.types.is_integer_dtype(num.dtype):
            big = ~null & ((num > 2**63 - 1) | (num < -(2**63))).to_numpy()
        else:
            big = ~null & ((f >= 2.0**63) | (f < -(2.0**63)))
        if big.any():
            raise _bad(src, name, column, values, big, f"an integer (int64): between {-(2**63)} and {2**63 - 1}")
        frac = ~null & (np.mod(f, 1) != 0)
        if frac.any():
            raise _bad(src, name, column, values, frac, "an integer (int64)" + (" after lander.scale" if scale else ""))
        if null.any():
            return pd.Series(pd.array([None if n else int(v) for v, n in zip(f, null, strict=True)], dtype="Int64"))
        return pd.Series(num.to_numpy().astype("int64") if scale is None else np.rint(f).astype("int64"))
    return num.astype("float64")


def _plain_str(v) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


_OFFSET = r"\d:\d{2}(?::\d{2}(?:\.\d+)?)?\s*(?:Z|[+-]\d{2}(?::?\d{2})?)$"


def _timestamps(src, name, column, values: pd.Series, null, zone, lander) -> pd.Series:
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return values.dt.tz_convert("UTC").astype("datetime64[us, UTC]")
    if pd.api.types.is_datetime64_dtype(values.dtype):
        return _localize(src, name, column, values, zone)
    if pd.api.types.is_numeric_dtype(values.dtype) or lander.epoch_unit is not None:
        if lander.epoch_unit is None:
            raise _bad(src, name, column, values, ~null, "timestamps: a number needs lander.epoch_unit (s, ms, us, ns)")
        num = pd.to_numeric(values, errors="coerce")
        wrong = ~null & num.isna().to_numpy()
        if wrong.any():
            raise _bad(src, name, column, values, wrong, f"an epoch number in {lander.epoch_unit}")
        return pd.to_datetime(num, unit=lander.epoch_unit, utc=True).astype("datetime64[us, UTC]")
    text = values.astype(object).where(~null, None)
    try:
        parsed = pd.to_datetime(text, format="ISO8601")
    except (ValueError, TypeError):
        parsed = None
    if parsed is None:
        try:  # several offsets: every value has one
            parsed = pd.to_datetime(text, format="ISO8601", utc=True)
        except (ValueError, TypeError):
            parsed = pd.to_datetime(text, format="ISO8601", errors="coerce", utc=True)
            wrong = ~null & parsed.isna().to_numpy()
            raise _bad(src, name, column, values, wrong, "an ISO 8601 timestamp") from None
        # utc=True would take a value without an offset as UTC, not as lander.time_zone's wall clock
        naive = ~null & ~text.astype(str).str.strip().str.contains(_OFFSET).to_numpy()
        if naive.any():
            raise _bad(
                src,
                name,
                column,
                values,
                naive,
                "an ISO 8601 timestamp: with a UTC offset on every value or on none (this file mixes both)",
            )
    if isinstance(parsed.dtype, pd.DatetimeTZDtype):
        return parsed.dt.tz_convert("UTC").astype("datetime64[us, UTC]")
    return _localize(src, name, column, parsed, zone)


def _localize(src, name, column, naive: pd.Series, zone) -> pd.Series:
    try:
        local = naive.dt.tz_localize(zone, ambiguous="raise", nonexistent="raise")
    except Exception as exc:  # noqa: BLE001 - pytz-style AmbiguousTimeError / NonExistentTimeError
        raise LandingError(
            src.name,
            name,
            f"a wall-clock time that does not exist or is ambiguous in {zone.key}: {exc}",
            column=column,
            rule="lander.time_zone",
        ) from None
    return local.dt.tz_convert("UTC").astype("datetime64[us, UTC]")


# ---- derived event ids -------------------------------------------------------------------------------
def _with_ids(src, lander, part: pd.DataFrame, where: str) -> pd.DataFrame:
    if src.event_id not in part.columns:
        part.insert(0, src.event_id, derived_event_ids(src, part))
    elif part[src.event_id].isna().any():
        wrong = part[src.event_id].isna().to_numpy()
        raise _bad(src, where, src.event_id, part[src.event_id], wrong, "not null")
    return part[[c for c, _, _ in src.raw_columns()]]


def derived_event_ids(src, frame: pd.DataFrame) -> pd.Series:
    """Stable event ids of one landing day's rows: a hash of each event's content (keys, event time,
    values) and its occurrence number among identical rows of that day (see the module doc)."""
    content = [*src.key_names, src.event_time, *src.value_names]
    canon = {}
    for c in content:
        s = frame[c]
        if isinstance(s.dtype, pd.DatetimeTZDtype):
            canon[c] = s.dt.tz_convert("UTC").astype("datetime64[us, UTC]").array.asi8
        elif pd.api.types.is_bool_dtype(s.dtype) or pd.api.types.is_numeric_dtype(s.dtype):
            canon[c] = pd.to_numeric(s).astype("float64").to_numpy(na_value=np.nan)
        else:
            canon[c] = s.astype(object).where(s.notna(), None).to_numpy()
    canon_df = pd.DataFrame(canon)
    base = pd.util.hash_pandas_object(canon_df, index=False, hash_key=_HASH_KEY).to_numpy()
    occurrence = pd.Series(base).groupby(base, sort=False).cumcount().to_numpy().astype(np.uint64)
    canon_df["__occurrence"] = occurrence
    h = pd.util.hash_pandas_object(canon_df, index=False, hash_key=_HASH_KEY).to_numpy()
    if src.event_id_type == "int64":
        return pd.Series((h >> np.uint64(1)).astype(np.int64))
    return pd.Series(pd.array([f"{int(v):016x}" for v in h], dtype="str"))


def end_of_day(ds: str | dt.date) -> pd.Timestamp:
    """23:59:59.999999 UTC of ``ds``: the ingestion time of an event landed without one."""
    return pd.Timestamp(str(ds), tz="UTC") + pd.Timedelta(microseconds=_DAY_US - 1)
