"""CDNOW transaction log -> the raw table of the ``cdnow_purchases`` source (``raw_events/cdnow_purchases``).

The ``cdnow`` parser of ``jobs.ingest.landing`` (``ParserLander("cdnow")``, see
``features/projects/cdnow/purchases.py``): ``lockstep land --source cdnow_purchases`` and the
``lockstep ingest-cdnow`` shortcut both land through it.

Source: ``jobs/ingest/data/CDNOW_master.txt.gz`` (attribution in ``jobs/ingest/data/README.md``),
69,659 whitespace-separated lines after one header line:
``customer_id date(YYYYMMDD) number_of_cds dollar_value``. A first line whose first field is not
a number is the header (so an export without one reads the same); "data line n" in errors counts
the lines after it.

Mapping to the source's raw columns:

- ``event_id``: derived from what identifies the event, not from where it sits in the file
  (:func:`event_ids`): ``(hash(customer, date) << 8) | occurrence`` as a non-negative int64 below
  2**53 (so a float64 holds it exactly: pandas makes an int64 column with a null float64, and JSON
  readers take numbers as doubles), where the hash is the top 45 bits of a keyed siphash of the
  customer-day (the shipped file's 67,591 customer-days do not collide; a collision in another export
  would be two events with one id, which the raw suite refuses) and occurrence is the row's
  number (0, 1, ...) among the rows of that customer-day, in file order. So an export with or
  without the header line, with a line of another customer-day deleted or added, or holding one
  day only gives every event the id it has in the shipped file; two identical orders of one
  customer-day keep two ids. Why not a hash of each row's content too (the generic lander's
  derived ids): the kernel sums a customer's purchases in ``(event_ts, event_id)`` order, and the
  orders of one customer-day tie on ``event_ts``, so their file order must stay their id order —
  any other order changes the last bit of some float sums (measured: ``spend_sum_30d`` and the
  spend means of the 1997-03-31 snapshot), and the features must stay those models were trained
  on. The price of it: deleting or reordering lines WITHIN one customer-day renumbers that
  customer-day's later orders (ids cannot move to another customer-day or another day). Until issue
  15 the id was the line number: any such export renumbered every later event, the new ids collided
  with other customers' earlier events and the kernel's dedup silently dropped them.
- ``customer_id``: the zero-padded id as int64.
- ``event_ts``: the purchase date at 00:00:00 UTC (the source has dates only).
  A customer's purchases on one day therefore tie on ``event_ts``; downstream
  ties are broken by ``event_id`` (a hash: an arbitrary but fixed order of the day's orders).
- ``ingested_at``: the end of the purchase day, 23:59:59.999999 UTC, as a daily
  export would deliver it. Each event lands in the ingest partition of its own
  day, and a ``known_at`` snapshot at D+1 00:00 sees every purchase of day D.
- ``n_items``: ``number_of_cds``; ``amount``: ``dollar_value`` (float64, dollars).
- ``category``: a price band from dollars per CD. Cut points sit around the
  quartiles of the per-CD price (p25 $12.27, median $13.99, p75 $15.49; a
  full-price CD of 1997 cost $12-16):

  ==========  ===========================  ============
  band        dollars per CD               share of rows
  ==========  ===========================  ============
  free        amount == 0                  0.1% (80)
  budget      0 < price < 12.00            23.0%
  standard    12.00 <= price < 16.00       55.3%
  premium     price >= 16.00               21.5%
  (null)      n_items == 0 or amount null  0 rows
  ==========  ===========================  ============

  Comparisons are on integer cents (``cents < 1200 * n_items``) so a price of
  exactly $12.00 or $16.00 is never misplaced by float rounding.

Oddities found in the file, and how each is handled (no row is dropped):

- 80 rows with ``dollar_value == 0`` (all with 1 CD; promotions or fully
  discounted orders): kept with ``amount = 0.0`` and category ``free``, so they
  count as purchases but add nothing to spend.
- No row has ``number_of_cds == 0`` and none has a negative value; a zero-CD row
  would get a null category (there is no price per CD), not be dropped.
- 255 lines repeat an earlier line exactly (same customer, day, CDs and
  dollars; e.g. customer 499 bought several $11.49 orders on 1997-10-01). The
  file has no order id, and repeated same-price orders on one day are plausible,
  so they are kept as separate purchases with their own ``event_id``s (occurrence 0, 1, ...
  of that content) — they are not re-deliveries, which in Lockstep are rows sharing an
  ``event_id``.
- 2,068 rows share (customer, day) with another row: several orders on a day,
  kept; they tie on ``event_ts`` (see above).
- Every calendar day from 1997-01-01 to 1998-06-30 (546 days) has purchases, so
  no ingest partition of the data's span is empty; a range beyond it is.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
from pathlib import Path

import numpy as np
import pandas as pd

from features.projects.cdnow.purchases import CDNOW_PURCHASES
from jobs.ingest.landing import decoded, decompressed
from jobs.lake import day_range
from jobs.schemas import raw_schema, to_raw

CDNOW_PATH = Path(__file__).with_name("data") / "CDNOW_master.txt.gz"
CDNOW_COLUMNS = ("customer_id", "date", "number_of_cds", "dollar_value")

#: Price bands in dollars per CD: (label, upper bound in cents per CD, exclusive).
PRICE_BANDS = (("budget", 1200), ("standard", 1600))
TOP_BAND = "premium"
FREE_BAND = "free"

_DAY_US = 86_400_000_000
#: Low bits of an event id: the order's number within its customer-day (CDNOW has at most 16).
OCCURRENCE_BITS = 8
#: Event ids are below 2**ID_BITS: exact in a float64.
ID_BITS = 53
_ID_HASH_KEY = "lockstep-cdnow-1"
#: The raw columns CDNOW lands (the declaration's order).
RAW_COLUMNS: tuple[str, ...] = tuple(CDNOW_PURCHASES.raw_column_names)


def price_band(amount, n_items) -> np.ndarray:
    """Category label per row (object array; ``None`` where there is no price per CD).

    ``free`` for a zero amount, else ``budget`` / ``standard`` / ``premium`` by
    dollars per CD (cut points ``PRICE_BANDS``); ``None`` when ``n_items`` is 0
    or null, or ``amount`` is null.
    """
    amount = pd.to_numeric(pd.Series(amount), errors="raise").astype("float64").to_numpy()
    n = pd.Series(n_items).astype("Float64").to_numpy(dtype="float64", na_value=np.nan)
    out = np.full(len(amount), None, dtype=object)
    valid = ~np.isnan(amount) & ~np.isnan(n) & (n > 0)
    cents = np.zeros(len(amount), dtype=np.int64)
    cents[valid] = np.rint(amount[valid] * 100).astype(np.int64)
    n_int = np.where(valid, n, 1).astype(np.int64)
    out[valid] = TOP_BAND
    # Assign from the highest band down so each row ends in the lowest band it fits.
    for label, upper_cents in reversed(PRICE_BANDS):
        out[valid & (cents < upper_cents * n_int)] = label
    out[valid & (cents == 0)] = FREE_BAND
    return out


def _parse_ds(value) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(str(value))


def read_cdnow(path=None) -> pd.DataFrame:
    """The CDNOW log as a frame of the ``cdnow_purchases`` raw columns, in source line order.

    Raises ``ValueError`` naming the file and the line of any malformed row (wrong field
    count, bad date, negative or non-numeric value, a byte that is not UTF-8), or the last
    whole line of a truncated gzip file.
    """
    path = Path(path) if path is not None else CDNOW_PATH
    data = path.read_bytes()
    try:
        text = decoded(decompressed(data, "gzip") if path.suffix == ".gz" else data)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    lines = text.splitlines()
    first_field = lines[0].split()[:1] if lines else []
    header = 1 if first_field and not first_field[0].isdigit() else 0
    # Data line n is file line n + header.
    bad = [n for n, line in enumerate(lines[header:], 1) if len(line.split()) != len(CDNOW_COLUMNS)]
    if bad:
        first = len(lines[bad[0] - 1 + header].split())
        raise ValueError(
            f"{path}: malformed data line(s) {bad[:10]} (file line(s) {[n + header for n in bad[:10]]}; expected "
            f"{len(CDNOW_COLUMNS)} fields, file line {bad[0] + header} has {first})"
        )
    raw = pd.read_csv(io.StringIO(text), sep=r"\s+", header=None, skiprows=header, names=list(CDNOW_COLUMNS), dtype=str)
    line_no = np.arange(1, len(raw) + 1, dtype=np.int64)

    def numeric(col: str, kind: str) -> np.ndarray:
        values = pd.to_numeric(raw[col], errors="coerce")
        wrong = values.isna() | (values < 0)
        if kind == "int":
            wrong |= values % 1 != 0
        wrong = wrong.to_numpy()
        if wrong.any():
            raise ValueError(f"{path}: bad {col} on data line(s) {line_no[wrong][:10].tolist()}")
        return values.to_numpy(dtype="int64" if kind == "int" else "float64")

    customer_id = numeric("customer_id", "int")
    n_items = numeric("number_of_cds", "int")
    amount = numeric("dollar_value", "float")
    day = pd.to_datetime(raw["date"], format="%Y%m%d", errors="coerce")
    if day.isna().any():
        bad_lines = line_no[day.isna().to_numpy()][:10].tolist()
        raise ValueError(f"{path}: bad date on data line(s) {bad_lines}")
    event_ts = day.astype("datetime64[us]").dt.tz_localize("UTC")
    ingested_at = event_ts + pd.Timedelta(microseconds=_DAY_US - 1)
    df = pd.DataFrame(
        {
            "customer_id": customer_id,
            "event_ts": event_ts,
            "ingested_at": ingested_at,
            "n_items": n_items,
            "amount": amount,
            "category": pd.array(price_band(amount, n_items), dtype="str"),
        }
    )
    try:
        df.insert(0, CDNOW_PURCHASES.event_id, event_ids(customer_id, event_ts))
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return df[list(RAW_COLUMNS)]


def event_ids(customer_id, event_ts) -> np.ndarray:
    """Stable int64 event ids: ``(hash(customer, day) << OCCURRENCE_BITS) | occurrence`` (see the
    module doc), ``occurrence`` counting the rows of one customer-day in the given order. A
    customer-day with more than ``2 ** OCCURRENCE_BITS`` rows is a ``ValueError``."""
    day_us = pd.Series(event_ts).dt.tz_convert("UTC").astype("datetime64[us, UTC]").array.asi8
    key = pd.DataFrame({"customer_id": np.asarray(customer_id, dtype=np.int64), "day": day_us})
    base = pd.util.hash_pandas_object(key, index=False, hash_key=_ID_HASH_KEY).to_numpy()
    occurrence = pd.Series(base).groupby(base, sort=False).cumcount().to_numpy().astype(np.uint64)
    if len(occurrence) and int(occurrence.max()) >= 1 << OCCURRENCE_BITS:
        worst = int(np.argmax(occurrence))
        raise ValueError(
            f"customer {int(key['customer_id'].iloc[worst])} has more than {1 << OCCURRENCE_BITS} orders on "
            f"{pd.Timestamp(day_us[worst], unit='us', tz='UTC').date()}: their event ids cannot be derived"
        )
    top = base >> np.uint64(64 - ID_BITS + OCCURRENCE_BITS)  # then the occurrence: < 2**ID_BITS
    return ((top << np.uint64(OCCURRENCE_BITS)) | occurrence).astype(np.int64)


def iter_ingest_days(events: pd.DataFrame, ds_from, ds_to):
    """Yield ``(ds, frame)`` for every calendar day in ``[ds_from, ds_to]``, the frame
    holding the events with ``date(ingested_at) == ds`` sorted by ``event_id``
    (an empty frame for a day without events)."""
    ingest_day = events["ingested_at"].dt.tz_convert("UTC").dt.date
    groups = {d: g for d, g in events.groupby(ingest_day, sort=False)}
    empty = events.iloc[0:0]
    ds_from, ds_to = _parse_ds(ds_from), _parse_ds(ds_to)
    if ds_to < ds_from:
        raise ValueError(f"ds_to {ds_to} is before ds_from {ds_from}")
    for ds in day_range(ds_from, ds_to):
        part = groups.get(dt.date.fromisoformat(ds), empty)
        yield ds, part.sort_values("event_id", kind="stable").reset_index(drop=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def parse_days(source, lander, days: list[str], path=None):
    """The ``cdnow`` parser (``jobs.ingest.landing``): ``(ds, frame)`` for each of ``days``, from
    ``path`` (default the lander's path, else the shipped log)."""
    from jobs.ingest.landing import Parsed, resolve_path

    path = Path(resolve_path(path or lander.path) if (path or lander.path) else CDNOW_PATH)
    events = read_cdnow(path)
    return Parsed(
        days=list(iter_ingest_days(events, days[0], days[-1])),
        producer={"file": path.name, "price_bands_cents": dict(PRICE_BANDS)},
        inputs={path.name: _sha256(path)},
    )


def ingest_cdnow(lake, ds_from=None, ds_to=None, source=None) -> list:
    """Write the ``cdnow_purchases`` raw partitions by ingest date, one per calendar day in
    ``[ds_from, ds_to]`` (default: the data's full span, 1997-01-01..1998-06-30), empty for a day
    without events; ``source`` is another path of the log. Returns the manifests in ``ds`` order.

    Idempotent: a re-run replaces each partition with identical content.
    """
    path = Path(source) if source is not None else CDNOW_PATH
    events = read_cdnow(path)
    ingest_day = events["ingested_at"].dt.date
    ds_from = _parse_ds(ds_from) if ds_from is not None else ingest_day.min()
    ds_to = _parse_ds(ds_to) if ds_to is not None else ingest_day.max()
    table = lake.table(CDNOW_PURCHASES.table, raw_schema(CDNOW_PURCHASES))
    producer = {
        "job": "ingest_cdnow",
        "source": CDNOW_PURCHASES.name,
        "file": path.name,
        "price_bands_cents": dict(PRICE_BANDS),
    }
    inputs = {path.name: _sha256(path)}
    manifests = []
    for ds, part in iter_ingest_days(events, ds_from, ds_to):
        manifests.append(table.write_partition(ds, to_raw(CDNOW_PURCHASES, part), producer=producer, inputs=inputs))
    return manifests
