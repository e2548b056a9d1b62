"""The example projects: one package per team, one module per declaration (the feature repo).

``features.repo.load()`` imports every module here and collects its sources, feature sets and
models. A team adds its own package beside these (or points ``LOCKSTEP_REPO`` at its own).
"""

#: What a job works on when no --model is named: the CDNOW example (the demo's and the README's).
DEFAULT_MODEL = "repurchase_90d"
