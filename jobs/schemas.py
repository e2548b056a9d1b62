"""Arrow schemas of the tables Lockstep's jobs write.

``RAW_EVENTS`` is the contract between the producers (CDNOW ingest, synthetic
generator) and every consumer (validation, feature engines, the online store).
All timestamps are UTC at microsecond precision (DESIGN §1), stored as Parquet
``TIMESTAMP(us, UTC)``.
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa

RAW_EVENTS_TABLE = "raw_events"

UTC_US = pa.timestamp("us", tz="UTC")

RAW_EVENTS = pa.schema(
    [
        pa.field("event_id", pa.int64(), nullable=False),
        pa.field("customer_id", pa.int64(), nullable=False),
        pa.field("event_ts", UTC_US, nullable=False),
        pa.field("ingested_at", UTC_US, nullable=False),
        pa.field("n_items", pa.int64()),
        pa.field("amount", pa.float64()),
        pa.field("category", pa.string()),
    ]
)

RAW_EVENTS_COLUMNS: tuple[str, ...] = tuple(RAW_EVENTS.names)


def to_raw_events(df: pd.DataFrame) -> pa.Table:
    """The frame as an Arrow table in exactly the ``RAW_EVENTS`` schema (column order, types).

    Raises ``ValueError`` naming the columns that are missing or null where the
    schema forbids nulls, rather than letting a writer coerce them.
    """
    missing = [c for c in RAW_EVENTS_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"raw events frame lacks columns {missing}")
    nulls = [f.name for f in RAW_EVENTS if not f.nullable and df[f.name].isna().any()]
    if nulls:
        raise ValueError(f"raw events frame has nulls in non-nullable columns {nulls}")
    table = pa.Table.from_pandas(df[list(RAW_EVENTS_COLUMNS)], schema=RAW_EVENTS, preserve_index=False)
    return table.replace_schema_metadata(None)


def feature_schema(fs, query_columns=None, entity_type: str = "int64") -> pa.Schema:
    """Arrow schema of a feature table of ``fs`` (``features.kernel.output_columns``):
    keys not null, counts int64 not null, every other feature float64 (null = no value)."""
    from features.kernel import output_columns

    fields = []
    keys = {fs.entity, "as_of"}
    integer = {f.name for f in fs.features if f.is_integer}
    for name, type_str in output_columns(fs, query_columns, entity_type):
        fields.append(pa.field(name, _arrow_type(type_str), nullable=not (name in keys or name in integer)))
    return pa.schema(fields)


def _arrow_type(type_str: str) -> pa.DataType:
    if type_str.startswith("timestamp["):
        return UTC_US
    return pa.type_for_alias(type_str)


#: The columns of a predictions row after the model's id columns (``predictions_schema``).
PREDICTION_COLUMNS: tuple[tuple[str, pa.DataType], ...] = (
    ("score", pa.float64()),
    ("model_name", pa.string()),
    ("model_version", pa.int64()),
    ("role", pa.string()),
    ("feature_set_fingerprint", pa.string()),
    ("scored_at", UTC_US),
)


def predictions_schema(model) -> pa.Schema:
    """``<model.predictions_table>/ds=D``: what batch scoring writes and the SQL publisher reads.

    The model's id columns (``model.id_columns``: the query id, then the join keys; int64 or
    string), then ``score, model_name, model_version, role, feature_set_fingerprint, scored_at``;
    nothing is null. ``feature_set_fingerprint`` is the model's compatibility fingerprint
    (``model.fingerprint``: the joined sets' fingerprints, ``+``-joined in join order).
    """
    fields = [pa.field(name, _arrow_type(type_), nullable=False) for name, type_ in model.id_columns]
    fields += [pa.field(name, type_, nullable=False) for name, type_ in PREDICTION_COLUMNS]
    return pa.schema(fields)
