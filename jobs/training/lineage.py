"""The lineage a trained model carries into the registry: which training-set partitions (with their
content fingerprints), code, environment, label definition and ranges. Shared by the LightGBM
trainer (``trainer``) and the linear baseline (``baseline``)."""

from __future__ import annotations

import hashlib
import json


def lineage_fields(model, table, parts: dict, spec) -> dict:
    """The lineage a ``Candidate`` needs (the registry's gate checks it), for ``model`` (a
    ``features.model.Model``) trained on the training-set partitions ``parts`` (role -> manifests) of
    ``table``: code commit, the joined feature sets (names, fingerprints; ``feature_set_fingerprint``
    = ``model.fingerprint``), every partition's content fingerprint, environment, holdback key and
    the ranges."""
    from jobs.models import metadata

    env = metadata.environment()
    holdback_parts = {f"{table.name}/ds={m.ds}": m.content_fingerprint for m in parts["holdback"]}
    return {
        "model": model.name,
        "feature_set": "+".join(fs.name for fs in model.feature_sets),
        "feature_sets": [{"name": fs.name, "fingerprint": fs.fingerprint} for fs in model.feature_sets],
        "feature_names": list(model.feature_names),
        "code_commit": metadata.code_commit(),
        "feature_set_fingerprint": model.fingerprint,
        "training_set_fingerprints": {
            f"{table.name}/ds={m.ds}": m.content_fingerprint for ms in parts.values() for m in ms
        },
        "environment_digest": metadata.environment_digest(env),
        "environment": env,
        "holdback": {"key": holdback_key(holdback_parts), "range": list(spec.holdback), "partitions": holdback_parts},
        "ranges": {"train": list(spec.train), "valid": list(spec.valid), "holdback": list(spec.holdback)},
    }


def label_params(parts: dict, spec) -> dict:
    """The label definition and embargo a model was trained under (recorded with its parameters)."""
    producer = parts["train"][0].producer
    return {
        "embargo_days": spec.embargo_days,
        "label_definition": producer.get("label_definition", ""),
        "horizon_days": producer.get("horizon_days"),
    }


def holdback_key(partitions: dict[str, str]) -> str:
    """One id for a holdback range: its partitions and their content fingerprints."""
    return hashlib.sha256(json.dumps(sorted(partitions.items())).encode()).hexdigest()
