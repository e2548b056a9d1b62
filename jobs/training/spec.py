"""What a training run trains on: ``TrainSpec`` (ranges, model, LightGBM settings) and
``resolve_spec``, which fills in the declared model's defaults. Shared by the trainer, the
baseline and the parameter search."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pandas as pd

from features.model import Model
from jobs.config import Config
from jobs.training import BACKENDS, CONSTRUCT
from jobs.training.labels import embargo_days


@dataclass(frozen=True)
class TrainSpec:
    """What to train on and how. Ranges are inclusive ``(from, to)`` cut-off dates.

    ``model_name``: the declared model (None: the repo's default model, filled in by
    :func:`resolve_spec`); ``embargo_days``: None = the model's label horizon; ``num_boost_round``:
    None = the model's declared ``rounds``; ``params`` go over the model's declared ``params``
    (all by ``resolve_spec``).
    """

    train: tuple[str, str]
    valid: tuple[str, str]
    holdback: tuple[str, str]
    model_name: str | None = None
    params: dict = field(default_factory=dict)
    num_boost_round: int | None = None
    patience: int = 30
    backend: str = "streamed"  # streamed | memory | dask
    construct: str = "inline"  # inline | subprocess (streamed only)
    save_binary: bool = False
    embargo_days: int | None = None

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.construct not in CONSTRUCT:
            raise ValueError(f"construct must be one of {CONSTRUCT}, got {self.construct!r}")
        for role in ("train", "valid", "holdback"):
            a, b = getattr(self, role)
            a, b = str(pd.Timestamp(str(a)).date()), str(pd.Timestamp(str(b)).date())
            if b < a:
                raise ValueError(f"{role} range {a}..{b} is empty")
            object.__setattr__(self, role, (a, b))
        gap = (pd.Timestamp(self.valid[0]) - pd.Timestamp(self.train[1])).days
        if gap <= 0:
            raise ValueError(f"valid range {self.valid} must start after the train range {self.train}")
        if self.embargo_days is not None and gap < self.embargo_days:
            raise ValueError(
                f"valid starts {gap} days after the last training cut-off; labels look "
                f"{self.embargo_days} days ahead (embargo_days), so training labels would overlap "
                "the validation period"
            )
        if self.holdback[0] <= self.valid[1]:
            raise ValueError(f"holdback range {self.holdback} must start after the valid range {self.valid}")


def resolve_spec(cfg: Config, spec: TrainSpec) -> tuple[Model, TrainSpec]:
    """The model ``spec`` trains (from ``cfg.repo()``) and ``spec`` with its defaults filled in:
    the model's name, its declared parameters under the spec's own, its declared rounds, and the
    embargo = the model's label horizon (checked against the ranges)."""
    repo = cfg.repo()
    model = repo.model(spec.model_name) if spec.model_name else repo.default_model()
    changes = {}
    if spec.model_name != model.name:
        changes["model_name"] = model.name
    if spec.embargo_days is None:
        changes["embargo_days"] = embargo_days(model)
    if spec.num_boost_round is None:
        changes["num_boost_round"] = model.rounds
    if model.params:
        changes["params"] = {**dict(model.params), **spec.params}
    return model, (dataclasses.replace(spec, **changes) if changes else spec)


__all__ = ["TrainSpec", "resolve_spec"]
