"""The two peers of ``dep_delay_15`` on its holdback rows: a historical rate and a schedule-only LightGBM."""

from __future__ import annotations

import numpy as np
import pandas as pd

#: The flight's own timetable columns (the schedule-only peer's features).
SCHEDULE_COLUMNS = ("carrier", "origin", "dest", "sched_hour", "month", "distance")
CATEGORICAL = ("carrier", "origin", "dest")
#: The historical rate's groups, finest first: an empty cell falls back to the next one.
RATE_LEVELS = (("carrier", "origin", "sched_hour"), ("carrier", "origin"), ("carrier",), ())


def schedule_columns(cfg, ds_from: str, ds_to: str) -> pd.DataFrame:
    """``flight_id`` -> the timetable columns, from the landed ``flight_schedule`` source."""
    table = cfg.lake().table("raw_events/flight_schedule")
    cols = ["flight_id", *[c for c in SCHEDULE_COLUMNS if c != "origin"]]
    frame = table.read(ds_from, ds_to, columns=cols)
    return frame.drop_duplicates("flight_id", keep="last")


def historical_rate(train: pd.DataFrame, test: pd.DataFrame) -> tuple[np.ndarray, dict]:
    """The train rows' delay rate of the test row's (carrier, origin, sched_hour) cell; an empty cell
    falls back to (carrier, origin), then carrier, then the overall rate. Returns the scores and how
    many test rows each level scored."""
    score = pd.Series(np.nan, index=test.index)
    used = {}
    for level in RATE_LEVELS:
        todo = score.isna()
        if level:
            rate = train.groupby(list(level), observed=True)["label"].mean().rename("r")
            got = test.loc[todo, list(level)].join(rate, on=list(level))["r"]
        else:
            got = pd.Series(train["label"].mean(), index=test.index[todo])
        score[todo] = got
        used["x".join(level) or "overall"] = int((todo & score.notna()).sum())
    return score.to_numpy(), used


def schedule_lgbm(train: pd.DataFrame, valid: pd.DataFrame, test: pd.DataFrame, rounds: int = 300, seed: int = 0):
    """LightGBM on the schedule columns only (carrier, origin, dest as categories); early stopping on valid."""
    import lightgbm as lgb

    cats = {c: pd.CategoricalDtype(sorted(set(train[c].dropna()))) for c in CATEGORICAL}

    def x(frame):
        out = frame[list(SCHEDULE_COLUMNS)].copy()
        for c, dtype in cats.items():
            out[c] = out[c].astype(dtype)
        return out

    params = {
        "objective": "binary",
        "learning_rate": 0.05,
        "num_leaves": 31,
        "verbose": -1,
        "seed": seed,
        "num_threads": 2,
        "deterministic": True,
    }
    booster = lgb.train(
        params,
        lgb.Dataset(x(train), train["label"]),
        rounds,
        valid_sets=[lgb.Dataset(x(valid), valid["label"])],
        callbacks=[lgb.early_stopping(30, verbose=False)],
    )
    return booster.predict(x(test), num_iteration=booster.best_iteration), booster.best_iteration
