"""Scoring stage: batch scoring of feature snapshots into ``predictions/ds=D`` (``batch``) and their
publication as a SQL table (``sql``)."""
