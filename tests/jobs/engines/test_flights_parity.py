"""The flights sets on real rows: local == Dask == Spark == online, exactly, for January 2013.

The three string-keyed sets of ``dep_delay_15`` (``plane_recent_v1`` by ``tailnum``,
``origin_congestion_v1`` and ``origin_weather_v1`` by ``origin``) over one landed lake (31 days
of flights and weather), queried once per scheduled January flight at its ``as_of``
(scheduled departure - 2 h) — the model's own queries, flights without a plane included
(their ``tailnum`` is null: the plane set's defaults). Reference: ``features.kernel.compute``
over every landed event. Each engine's output (per set through ``jobs.engines.run``, and the
three-set vector through ``jobs.engines.join.join_features``) is sorted and compared with
``==`` on every value (NaN at the same positions), dtypes included; the online path
(``features.online.compute_one``, one entity's events) is compared query by query.

Three origins in 5 buckets: a Spark group holds more rows than one Arrow batch (10,000), so its
string columns reach the UDF as multi-chunk arrays (the engine's ``_to_spark`` case).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features import kernel
from features.online import compute_one
from features.registry import get
from jobs import engines
from jobs.config import Config
from jobs.engines.join import join_features
from jobs.ingest.landing import land

MONTH = ("2013-01-01", "2013-01-31")
SETS = ("plane_recent_v1", "origin_congestion_v1", "origin_weather_v1")
MODES = ("known_at", "as_of")
ENGINES = (
    "local",
    pytest.param("dask", marks=pytest.mark.dask),
    pytest.param("spark", marks=pytest.mark.spark),
)


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    """One landed January (flights, weather), its raw frames and the model's queries."""
    root = tmp_path_factory.mktemp("flights_parity")
    cfg = Config(lake_root=str(root / "lake"))
    land(cfg, "flights", *MONTH)
    land(cfg, "weather", *MONTH)
    repo = cfg.repo()
    tables = {name: cfg.lake().table(repo.source(name).table) for name in ("flights", "weather")}
    raw = {name: t.read(*MONTH) for name, t in tables.items()}
    files = {name: t.files(*MONTH) for name, t in tables.items()}
    flights = raw["flights"]
    queries = pd.DataFrame(
        {
            "flight_id": flights["flight_id"],
            "tailnum": flights["tailnum"],
            "origin": flights["origin"],
            "as_of": flights["sched_dep_ts"] - pd.Timedelta(hours=2),
        }
    )
    return root, raw, files, queries


def events_of(raw, fs):
    return raw[fs.source.name]


def set_queries(queries: pd.DataFrame, fs) -> pd.DataFrame:
    return queries[["flight_id", fs.entity, "as_of"]]


@pytest.fixture(scope="module")
def reference(lake):
    """kernel.compute over all events, per (set, mode)."""
    _, raw, _, queries = lake
    out = {}
    for name in SETS:
        fs = get(name)
        for mode in MODES:
            out[(name, mode)] = kernel.compute(events_of(raw, fs), set_queries(queries, fs), fs, mode)
    return out


def canonical(df: pd.DataFrame) -> pd.DataFrame:
    out = df.sort_values("flight_id", kind="stable", ignore_index=True)
    for c in ("flight_id", "tailnum", "origin"):
        if c in out.columns:
            out[c] = out[c].astype(object)  # the values compared, whatever string dtype carries them
    return out


def assert_identical(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert list(got.columns) == list(want.columns)
    got, want = canonical(got), canonical(want)
    assert len(got) == len(want)
    for c in want.columns:
        a, b = got[c], want[c]
        if c not in ("flight_id", "tailnum", "origin"):
            assert a.dtype == b.dtype, (c, a.dtype, b.dtype)
        na, nb = a.isna().to_numpy(), b.isna().to_numpy()
        assert (na == nb).all(), f"column {c}: nulls at {int((na != nb).sum())} other position(s)"
        same = a.to_numpy()[~na] == b.to_numpy()[~nb]
        assert bool(np.all(same)), f"column {c}: {int((~same).sum())} value(s) differ"


@pytest.fixture
def engine_options(request):
    engine = request.node.callspec.params["engine"]
    if engine == "dask":
        return {"client": request.getfixturevalue("dask_client")}
    if engine == "spark":
        request.getfixturevalue("spark")
    return {}


def test_the_month_is_real_and_not_trivial(lake, reference):
    _, raw, _, queries = lake
    # the flights reported in January (a flight of late Jan 31 reported on Feb 1 is not landed)
    assert len(raw["flights"]) == len(queries) == 26_810
    assert int(queries["tailnum"].isna().sum()) == 154
    plane = reference[("plane_recent_v1", "known_at")]
    assert int((plane["plane_departures_24h"] > 0).sum()) == 13_505
    # a flight without a plane gets the set's declared defaults
    keyless = plane[plane["tailnum"].isna()]
    assert (keyless["plane_departures_7d"] == 0).all() and keyless["plane_delay_mean_7d"].isna().all()
    weather = reference[("origin_weather_v1", "known_at")]
    assert weather["weather_wind_mean_3h"].notna().sum() > 20_000


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("engine", ENGINES)
def test_each_set_on_every_engine(engine, mode, lake, reference, engine_options):
    root, raw, files, queries = lake
    cfg = Config(engine=engine, lake_root=str(root / "lake"), buckets=5)
    for name in SETS:
        fs = get(name)
        got = pd.concat(
            list(engines.run(cfg, fs, files[fs.source.name], set_queries(queries, fs), mode, **engine_options)),
            ignore_index=True,
        )
        assert_identical(got, reference[(name, mode)])


@pytest.mark.parametrize("engine", ENGINES)
def test_the_joined_vector_on_every_engine(engine, lake, reference, engine_options):
    root, _, _, queries = lake
    cfg = Config(engine=engine, lake_root=str(root / "lake"), buckets=5)
    model = cfg.repo().model("dep_delay_15")
    got = pd.concat(list(join_features(cfg, model, queries, modes="known_at", **engine_options)), ignore_index=True)
    want = queries[["flight_id", "tailnum", "origin", "as_of"]]
    for name in SETS:
        fs = get(name)
        want = want.merge(reference[(name, "known_at")].drop(columns=[fs.entity, "as_of"]), on="flight_id")
    assert list(got.columns) == ["flight_id", "tailnum", "origin", "as_of", *model.feature_names]
    assert_identical(got, want[list(got.columns)])


@pytest.mark.parametrize("mode", MODES)
def test_online_matches_offline_per_query(mode, lake, reference):
    """compute_one given only the entity's events (indexed once per entity, as the service
    caches them), for every query of three days."""
    _, raw, _, queries = lake
    days = queries["as_of"].dt.strftime("%Y-%m-%d").isin(["2013-01-02", "2013-01-15", "2013-01-31"])
    checked = 0
    for name in SETS:
        fs = get(name)
        events = events_of(raw, fs)
        by_entity = {k: kernel.index_events(g, fs) for k, g in events.groupby(fs.entity, sort=False)}
        empty = kernel.index_events(events.iloc[0:0], fs)
        want = reference[(name, mode)][days.to_numpy()]
        for row in want.itertuples(index=False):
            key = getattr(row, fs.entity)
            got = compute_one(by_entity.get(key, empty) if pd.notna(key) else empty, key, row.as_of, fs, mode)
            for f in fs.feature_names:
                w = getattr(row, f)
                assert (got[f] is None and np.isnan(w)) or got[f] == w, (name, row.flight_id, f, got[f], w)
            checked += 1
    assert checked == 3 * int(days.sum())
