"""The serving path: reference service (``app``), online store (``store``), serving log (``log``),
traffic replay (``replay``). See DESIGN §7 and ``jobs.skew.job`` for the nightly comparison."""
