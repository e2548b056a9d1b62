"""Ingest stage: land a declared source's days as partitions of its raw table ``raw_events/<source>``.

``landing``: ``land(cfg, source, ds_from, ds_to)`` for any source (files of CSV / Parquet / JSON
Lines, or a named parser); ``cdnow``: the parser of the shipped CDNOW log; ``cdnow_synthetic``:
CDNOW-shaped events at any scale (benches)."""
