"""Canary serving (``jobs.serving.canary``): a stable, monotone share of entities served by the
challenger, staged by ``lockstep canary`` on the real MLflow registry and picked up by the poll."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from jobs.cli import main
from jobs.serving.app import Settings, create_app
from jobs.serving.canary import canary_point, in_canary

from .conftest import DAY, MODEL
from .test_metrics import samples, value
from .test_model_swap import lake, register, trained  # noqa: F401 - fixtures
from .test_shadow import features_of, logged

pytest.importorskip("mlflow")


def canary_set(entities, share: float, salt: str = "") -> set:
    return {e for e in entities if in_canary(canary_point((e,), MODEL.name, salt), share)}


def test_the_share_holds_within_one_point_and_a_ramp_only_adds_entities():
    entities = range(20_000)
    sets = {share: canary_set(entities, share) for share in (0.01, 0.05, 0.25, 1.0)}
    for share, got in sets.items():
        assert abs(len(got) / 20_000 - share) <= 0.01, (share, len(got))
    assert sets[0.01] <= sets[0.05] <= sets[0.25] <= sets[1.0] == set(entities)
    assert canary_set(entities, 0.05) == sets[0.05]  # stable: the same entities every time
    other = canary_set(entities, 0.05, salt="next challenger")
    assert abs(len(other) / 20_000 - 0.05) <= 0.01 and len(other & sets[0.05]) < 0.2 * len(other)
    assert canary_set(entities, 0.0) == set()
    # string keys and several keys hash their typed values: "5" is not 5, ("ab", "c") is not ("a", "bc")
    assert canary_point(("5",), "m") != canary_point((5,), "m")
    assert canary_point(("ab", "c"), "m") != canary_point(("a", "bc"), "m")


def queries(entities, tag: str) -> list[dict]:
    return [{"entity_id": int(e), "request_time": f"{DAY}T12:00:00Z", "request_id": f"{tag}-{e}"} for e in entities]


def test_the_canary_serves_its_share_with_the_challenger_and_keeps_its_entities_through_a_ramp(
    lake,  # noqa: F811
    trained,  # noqa: F811
    tmp_path,
    capsys,
):
    v1 = register(lake, trained, 5, 0.70, alias="champion")
    v2 = register(lake, trained, 15, 0.80)
    boosters, _ = trained
    assert main(["--lake", lake.lake_root, "canary", "--share", "0.05"]) == 0
    assert capsys.readouterr().out.strip() == f"{MODEL.name} v{v2} (challenger): canary share 0.05"
    entities = list(range(1, 401))
    at5, at25 = canary_set(entities, 0.05), canary_set(entities, 0.25)
    assert 5 <= len(at5) < len(at25) <= 160
    settings = Settings(lake_root=lake.lake_root, wal_dir=str(tmp_path / "wal"), cache_ttl_s=5.0, model_poll_s=0)
    with TestClient(create_app(settings, cfg=lake)) as c:
        state = c.app.state.lockstep
        first = c.post("/predict/batch", json={"queries": queries(entities, "a")}).json()["predictions"]
        one_canary, one_home = min(at5), min(set(entities) - at25)
        singles = [c.post("/predict", json=queries([e], "s")[0]).json() for e in (one_canary, one_home)]
        assert main(["--lake", lake.lake_root, "canary", "--share", "0.25"]) == 0  # the next stage, by hand
        assert "canary share 0.25" in capsys.readouterr().out
        assert state["challenger"].reload().status == "unchanged"  # same version, its new stage
        second = c.post("/predict/batch", json={"queries": queries(entities, "b")}).json()["predictions"]
        assert state["shadow"].flush(timeout=20)
        got = samples(c.get("/metrics").text)
    assert {p["entity_id"] for p in first if p["arm"] == "canary"} == at5
    assert {p["entity_id"] for p in second if p["arm"] == "canary"} == at25  # every 5% entity is still canary
    assert [(s["arm"], s["model_version"]) for s in singles] == [("canary", v2), ("champion", v1)]
    rows = logged(tmp_path)
    for tag, canary in (("a", at5), ("b", at25)):
        mine = rows.loc[[f"{tag}-{e}" for e in entities]]
        is_canary = mine.entity_id.isin(canary).to_numpy()
        assert (mine.arm.to_numpy() == np.where(is_canary, "canary", "champion")).all()
        assert (mine.model_version.to_numpy() == np.where(is_canary, v2, v1)).all()
        x = features_of(mine)
        want = np.where(is_canary, boosters[15].predict(x, num_threads=1), boosters[5].predict(x, num_threads=1))
        assert mine.score.tolist() == want.tolist()
        # the champion's rows are shadowed by the challenger; the canary's are the challenger's own
        assert mine.shadow_score.isna().to_numpy().tolist() == is_canary.tolist()
    n_canary = len(at5) + len(at25) + 1
    assert value(got, "lockstep_serving_predictions_total", arm="canary", model_version=v2, degraded="false") == (
        n_canary
    )
    assert value(got, "lockstep_serving_predictions_total", arm="champion", model_version=v1, degraded="false") == (
        2 * len(entities) - (len(at5) + len(at25)) + 1  # + the champion's single
    )
    assert value(got, "lockstep_serving_requests_total", arm="canary", endpoint="/predict", status=200) == 1
