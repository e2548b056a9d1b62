"""Training benchmark: streamed (lightgbm.Sequence over Parquet) vs in-memory LightGBM, and scoring throughput."""
