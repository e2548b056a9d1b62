"""Skew stage: the nightly training-serving skew job (``job``), its HTML report (``report``) and the
causes both name (``causes``)."""
