"""Ingest stage: land events as ``raw_events`` partitions (``cdnow``: the shipped CDNOW log;
``generate``: synthetic events of the same schema at any scale)."""
