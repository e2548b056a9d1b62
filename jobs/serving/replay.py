"""Traffic replay: a day of realistic requests built from CDNOW activity, sent to the running service.

``plan_day`` picks, for day ``ds`` (seeded): every customer who buys that day (a visit around a
purchase) plus an equal number of returning customers drawn from those with earlier purchases,
weighted by how often they bought; each request gets a uniformly random time of the day at
microsecond precision. ``replay`` sends them (bounded concurrency) and returns one row per
request with the HTTP status.
"""

from __future__ import annotations

import concurrent.futures as cf
import uuid

import numpy as np
import pandas as pd

US_PER_DAY = 86_400_000_000


def plan_day(
    events: pd.DataFrame,
    ds: str,
    n_requests: int | None = None,
    seed: int = 0,
    entity: str = "customer_id",
    mode: str | None = None,
) -> pd.DataFrame:
    """Requests for day ``ds``: columns request_id, entity_id, request_time (UTC, us), mode.

    ``events`` are raw events (``entity``, ``event_ts``). ``n_requests`` caps/fixes the count.
    """
    rng = np.random.default_rng(seed)
    day0 = pd.Timestamp(ds, tz="UTC")
    ts = events["event_ts"]
    buyers = pd.unique(events.loc[(ts >= day0) & (ts < day0 + pd.Timedelta(days=1)), entity].to_numpy())
    past = events.loc[ts < day0, entity].value_counts()
    n = n_requests if n_requests is not None else 2 * len(buyers)
    n_buyers = min(len(buyers), n // 2)
    picked = [rng.choice(buyers, n_buyers, replace=False)] if n_buyers else []
    if len(past) and n - n_buyers > 0:
        p = past.to_numpy(dtype=np.float64)
        picked.append(rng.choice(past.index.to_numpy(), n - n_buyers, replace=True, p=p / p.sum()))
    ids = np.concatenate(picked).astype(np.int64) if picked else np.empty(0, np.int64)
    offsets = rng.integers(0, US_PER_DAY, len(ids))
    t = pd.to_datetime(day0.value // 1000 + offsets, unit="us", utc=True)
    rid = [uuid.UUID(bytes=rng.bytes(16)).hex for _ in range(len(ids))]
    plan = pd.DataFrame({"request_id": rid, "entity_id": ids, "request_time": t})
    if mode:
        plan["mode"] = mode
    return plan.sort_values("request_time", ignore_index=True)


def _body(row) -> dict:
    body = {
        "entity_id": int(row.entity_id),
        "request_time": pd.Timestamp(row.request_time).isoformat(),
        "request_id": row.request_id,
    }
    if getattr(row, "mode", None):
        body["mode"] = row.mode
    return body


def replay(client, plan: pd.DataFrame, concurrency: int = 1, timeout: float = 10.0) -> pd.DataFrame:
    """Send every planned request; ``client`` is an ``httpx.Client`` (or TestClient) or a base URL.

    Returns ``plan`` plus ``status`` (HTTP status, 0 for a connection error) and ``score``.
    """
    import httpx

    own = isinstance(client, str)
    if own:
        client = httpx.Client(
            base_url=client,
            timeout=timeout,
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        )

    def one(row):
        try:
            r = client.post("/predict", json=_body(row))
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
