"""Model training from training-set Parquet: readers, LightGBM (streamed, in-memory, Dask), metrics, lineage.

Dtype contract (one for training, validation, holdback and scoring): every feature is a
float64 column in ``FeatureSet.feature_names`` order — counts are cast from int64 (exact
below 2**53), nulls become NaN (LightGBM's missing value). There are no categorical
features: a category-valued source enters a feature set as a numeric aggregate
(``distinct_count``), never as a pandas ``category`` dtype whose codes could differ between
training and scoring (MEASURED.md: pandas 3 raises "categorical_feature do not match").

This package's modules import LightGBM and scikit-learn; import them where they are used, so
that the CLI and DAG files stay light.
"""

BACKENDS = ("streamed", "memory", "dask")
CONSTRUCT = ("inline", "subprocess")
