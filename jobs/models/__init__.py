"""Models stage: the MLflow registry with its lineage gate (``registry``), the model flavors it stores
and loads (``flavors``), and the lineage facts and redaction every registered model passes
(``metadata``). Nothing here imports the training stage; training registers through it."""
