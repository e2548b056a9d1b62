"""Arrow schemas of the tables Lockstep's jobs write.

The raw table of a source (``source.table`` = ``raw_events/<source>``) has the schema
``raw_schema(source)``, derived from the declaration (``Source.raw_columns``): the contract
between its landing step and every consumer (validation, feature engines, the online store).
All timestamps are UTC at microsecond precision (DESIGN §1), stored as Parquet
``TIMESTAMP(us, UTC)``.
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa

UTC_US = pa.timestamp("us", tz="UTC")


def raw_schema(source) -> pa.Schema:
    """Arrow schema of ``source``'s raw table: id, keys, event time, ingestion time, values, in that
    order; non-nullable where the declaration says so; timestamps ``TIMESTAMP(us, UTC)``."""
    return pa.schema(
        [pa.field(name, _arrow_type(type_), nullable=nullable) for name, type_, nullable in source.raw_columns()]
    )


def to_raw(source, frame: pd.DataFrame) -> pa.Table:
    """``frame`` as an Arrow table in exactly ``raw_schema(source)`` (column order, types).

    Raises ``ValueError`` naming the source and the column that is missing, null where the
    declaration forbids nulls, or not convertible to its declared type, rather than letting a
    writer coerce it.
    """
    schema = raw_schema(source)
    missing = [c for c in schema.names if c not in frame.columns]
    if missing:
        raise ValueError(f"source {source.name!r}: the frame lacks column(s) {missing} (it has {list(frame.columns)})")
    nulls = [f.name for f in schema if not f.nullable and frame[f.name].isna().any()]
    if nulls:
        raise ValueError(f"source {source.name!r}: null values in non-nullable column(s) {nulls}")
    try:
        table = pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False)
    except (pa.ArrowException, TypeError, ValueError) as exc:
        for f in schema:  # name the column that does not convert
            try:
                pa.Array.from_pandas(frame[f.name], type=f.type)
            except (pa.ArrowException, TypeError, ValueError) as col_exc:
                raise ValueError(
                    f"source {source.name!r}, column {f.name!r}: not convertible to {f.type}: {col_exc}"
                ) from None
        raise ValueError(f"source {source.name!r}: frame does not convert to its raw schema: {exc}") from None
    return table.replace_schema_metadata(None)


def feature_schema(fs, query_columns=None, entity_type: str | None = None) -> pa.Schema:
    """Arrow schema of a feature table of ``fs`` (``features.kernel.output_columns``):
    keys not null, counts int64 not null, every other feature float64 (null = no value).
    The entity column is typed by ``fs.entity_type`` (int64 or string) unless ``entity_type`` says."""
    from features.kernel import output_columns

    entity_type = entity_type or fs.entity_type
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
    string; a join key null where its source key is nullable), then ``score, model_name,
    model_version, role, feature_set_fingerprint, scored_at``, never null. ``feature_set_fingerprint`` is the model's compatibility fingerprint
    (``model.fingerprint``: the joined sets' fingerprints, ``+``-joined in join order).
    """
    fields = [pa.field(name, _arrow_type(type_), nullable=nullable) for name, type_, nullable in model.id_fields]
    fields += [pa.field(name, type_, nullable=False) for name, type_ in PREDICTION_COLUMNS]
    return pa.schema(fields)
