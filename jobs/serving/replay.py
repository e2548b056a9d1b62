"""Traffic replay: a day of realistic requests built from a model's source activity, sent to the
running service.

``plan_day`` picks, for day ``ds`` (seeded), by the model's queries (``model``: a declaration;
default the repo's default model):

* one query key (entity snapshots): every entity with an event that day (a visit around it) plus
  an equal number of returning entities drawn from those with earlier events, weighted by how
  often they had one; each request gets a uniformly random time of the day at microsecond
  precision. Plan columns: request_id, entity_id, request_time (UTC, us), mode;
* query rows: every query row whose ``as_of`` falls on the day, requested at its ``as_of`` with its
  key columns (plan columns: request_id, the query keys by name, request_time, mode).

``replay`` sends them (bounded concurrency) and returns one row per request with the HTTP status.
"""

from __future__ import annotations

import concurrent.futures as cf
import uuid

import numpy as np
import pandas as pd

from features.model import QueryRows

US_PER_DAY = 86_400_000_000


def plan_day(
    events: pd.DataFrame,
    ds: str,
    n_requests: int | None = None,
    seed: int = 0,
    model=None,
    mode: str | None = None,
) -> pd.DataFrame:
    """Requests for day ``ds`` (see the module docstring).

    ``events`` are raw events of the model's query source. ``n_requests`` caps/fixes the count.
    """
    if model is None or isinstance(model, str):
        from features.repo import load

        repo = load()
        model = repo.model(model) if model else repo.default_model()
    rng = np.random.default_rng(seed)
    day0 = pd.Timestamp(ds, tz="UTC")
    if isinstance(model.queries, QueryRows):
        plan = _query_rows(events, model, day0, n_requests, rng)
    else:
        plan = _entities(events, model, day0, n_requests, rng)
    if mode:
        plan["mode"] = mode
    return plan.sort_values("request_time", ignore_index=True, kind="stable")


def _entities(events, model, day0, n_requests, rng) -> pd.DataFrame:
    (entity, _), *_ = model.query_keys
    ts = events[model.queries.source.event_time]
    buyers = pd.unique(events.loc[(ts >= day0) & (ts < day0 + pd.Timedelta(days=1)), entity].to_numpy())
    past = events.loc[ts < day0, entity].value_counts()
    n = n_requests if n_requests is not None else 2 * len(buyers)
    n_buyers = min(len(buyers), n // 2)
    picked = [rng.choice(buyers, n_buyers, replace=False)] if n_buyers else []
    if len(past) and n - n_buyers > 0:
        p = past.to_numpy(dtype=np.float64)
        picked.append(rng.choice(past.index.to_numpy(), n - n_buyers, replace=True, p=p / p.sum()))
    dtype = np.int64 if events[entity].dtype.kind in "iu" else object
    ids = np.concatenate(picked).astype(dtype) if picked else np.empty(0, dtype)
    offsets = rng.integers(0, US_PER_DAY, len(ids))
    t = pd.to_datetime(day0.value // 1000 + offsets, unit="us", utc=True)
    rid = [uuid.UUID(bytes=rng.bytes(16)).hex for _ in range(len(ids))]
    return pd.DataFrame({"request_id": rid, "entity_id": ids, "request_time": t})


def _query_rows(events, model, day0, n_requests, rng) -> pd.DataFrame:
    q = model.queries
    keys = [c for c, _ in model.query_keys]
    as_of = events[q.time] + pd.Timedelta(microseconds=q.offset_us)
    rows = events[((as_of >= day0) & (as_of < day0 + pd.Timedelta(days=1))).to_numpy()]
    rows = rows.drop_duplicates(model.query_id, keep="last")
    times = as_of.loc[rows.index]
    if n_requests is not None and n_requests < len(rows):
        keep = np.sort(rng.choice(len(rows), n_requests, replace=False))
        rows, times = rows.iloc[keep], times.iloc[keep]
    plan = pd.DataFrame({"request_id": rows[model.query_id].astype(str).to_numpy()})
    for k in keys:
        plan[k] = rows[k].to_numpy()
    plan["request_time"] = times.to_numpy()
    plan["request_time"] = pd.to_datetime(plan["request_time"], utc=True)
    return plan


_NOT_KEYS = ("request_id", "request_time", "mode", "entity_id", "status", "score")


def _native(v):
    return v.item() if isinstance(v, np.generic) else v


def _null(v) -> bool:
    return v is None or (isinstance(v, float) and v != v) or v is pd.NA or v is pd.NaT


def request_body(row) -> dict:
    """The ``/predict`` body of one planned request (a row of :func:`plan_day`)."""
    fields = row._asdict()
    body = {"request_time": pd.Timestamp(fields["request_time"]).isoformat(), "request_id": fields["request_id"]}
    if "entity_id" in fields:
        body["entity_id"] = _native(fields["entity_id"])
    # a null key (a nullable key column with no value) is sent as null
    keys = {k: (None if _null(v) else _native(v)) for k, v in fields.items() if k not in _NOT_KEYS}
    if keys:
        body["keys"] = keys
    if fields.get("mode"):
        body["mode"] = fields["mode"]
    return body


def replay(
    client, plan: pd.DataFrame, concurrency: int = 1, timeout: float = 10.0, api_key: str | None = None
) -> pd.DataFrame:
    """Send every planned request; ``client`` is an ``httpx.Client`` (or TestClient) or a base URL;
    ``api_key``: sent as ``X-API-Key`` (a service with keys configured answers 401 without one).

    Returns ``plan`` plus ``status`` (HTTP status, 0 for a connection error) and ``score``.
    """
    import httpx

    headers = {"X-API-Key": api_key} if api_key else None
    own = isinstance(client, str)
    if own:
        client = httpx.Client(
            base_url=client,
            timeout=timeout,
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        )

    def one(row):
        try:
            r = client.post("/predict", json=request_body(row), headers=headers)
        except httpx.HTTPError:
            return 0, None
        return r.status_code, (r.json().get("score") if r.status_code == 200 else None)

    rows = list(plan.itertuples(index=False))
    try:
        if concurrency <= 1:
            results = [one(r) for r in rows]
        else:
            with cf.ThreadPoolExecutor(concurrency) as pool:
                results = list(pool.map(one, rows))
    finally:
        if own:
            client.close()
    out = plan.copy()
    out["status"] = [s for s, _ in results]
    out["score"] = [sc for _, sc in results]
    return out
