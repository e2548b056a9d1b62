"""``lockstep shadow``: the report's numbers on a hand-built serving log of 8 compared rows, every one
computed by hand below (Spearman, agreement at the threshold, AUC, quantiles)."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pytest

from jobs.cli import main
from jobs.config import Config
from jobs.serving.log import log_schema, make_record, records_frame
from jobs.serving.shadow_report import auc, compare, run_shadow_report, spearman
from jobs.training.labels import labels_schema, labels_table

DS = "2024-03-05"
CHAMPION = [0.1, 0.4, 0.35, 0.8, 0.65, 0.2, 0.9, 0.55]
CHALLENGER = [0.2, 0.3, 0.6, 0.7, 0.45, 0.1, 0.95, 0.52]
LABELS = [0, 0, 1, 1, 0, 0, 1, 0]
# ranks champion [1,4,3,7,6,2,8,5], challenger [2,3,6,7,4,1,8,5]: sum d^2 = 1+1+9+0+4+1+0+0 = 16,
# rho = 1 - 6*16 / (8*63) = 17/21
RHO = 17 / 21
# >= 0.5: champion F F F T T F T T, challenger F F T T F F T T: they differ on rows 2 and 4
AGREEMENT = 6 / 8
# positives (rows 2,3,6): champion 0.35 beats 2 of the 5 negatives, 0.8 and 0.9 all 5: 12/15;
# challenger 0.6, 0.7, 0.95 beat all 5 negatives (max 0.52): 15/15
AUC_CHAMPION, AUC_CHALLENGER = 12 / 15, 1.0


def flights(cfg):
    return cfg.repo().model("dep_delay_15")


def served_log(decl, with_unshadowed: bool = True) -> pd.DataFrame:
    rows = []
    for i, (c, s) in enumerate(zip(CHAMPION, CHALLENGER)):
        rows.append(
            make_record(
                decl,
                request_id=f"f{i}",
                tailnum=f"N{i}",
                origin="JFK",
                entity_id=i,
                request_time=pd.Timestamp(f"{DS}T{8 + i:02d}:00Z"),
                served_at=pd.Timestamp(f"{DS}T{8 + i:02d}:00:01Z"),
                mode="fresh",
                model_name=decl.name,
                model_version="1",
                score=c,
                arm="champion",
                shadow_version="2",
                shadow_score=s,
            )
        )
    if with_unshadowed:  # dropped from the shadow: counted, not compared
        rows.append(
            make_record(
                decl,
                request_id="f8",
                tailnum="N8",
                origin="JFK",
                entity_id=8,
                request_time=pd.Timestamp(f"{DS}T20:00Z"),
                model_version="1",
                score=0.99,
                arm="champion",
            )
        )
    return records_frame(rows, decl)


def write(cfg, decl, frame) -> None:
    schema = log_schema(decl)
    cfg.lake().table(decl.serving_log_table, schema).write_partition(
        DS, pa.Table.from_pandas(frame, schema=schema, preserve_index=False), producer={"job": "test"}
    )


def test_the_statistics_by_hand():
    assert spearman(CHAMPION, CHALLENGER) == pytest.approx(RHO, abs=1e-12)
    assert spearman([1, 2, 2, 3], [1, 3, 3, 2]) == pytest.approx(1 / 3, abs=1e-12)  # ties: average ranks
    assert auc(CHAMPION, LABELS) == pytest.approx(AUC_CHAMPION, abs=1e-12)
    assert auc([0.5, 0.5, 0.2], [1, 0, 0]) == pytest.approx(0.75, abs=1e-12)  # a tie counts one half
    assert auc([0.1, 0.2], [1, 1]) is None and spearman([1, 1], [1, 2]) is None


def test_compare_on_the_hand_built_log(tmp_path):
    decl = flights(Config(lake_root=str(tmp_path)))
    frame = served_log(decl)
    got = compare(frame, 0.5, LABELS + [1])
    assert (got["rows"], got["compared"], got["labelled"]) == (9, 8, 8)
    assert (got["champion_versions"], got["shadow_versions"]) == (["1"], ["2"])
    assert got["spearman"] == pytest.approx(RHO, abs=1e-12)
    assert got["agreement"] == AGREEMENT
    assert got["positive_rate"] == {"champion": 0.5, "challenger": 0.5}
    assert got["auc"] == pytest.approx({"champion": AUC_CHAMPION, "challenger": AUC_CHALLENGER}, abs=1e-12)
    # sorted champion 0.1 0.2 0.35 0.4 0.55 0.65 0.8 0.9: q0.25 at position 1.75, q0.5 at 3.5
    assert got["quantiles"]["champion"] == pytest.approx([0.1, 0.17, 0.3125, 0.475, 0.6875, 0.83, 0.9], abs=1e-12)
    assert got["quantiles"]["challenger"][0] == 0.1 and got["quantiles"]["challenger"][-1] == 0.95
    # at 0.6 champion F F F T T F T F, challenger F F T T F F T F: rows 2 and 4 again
    assert compare(frame, 0.6)["agreement"] == AGREEMENT and compare(frame, 0.6)["auc"] == {}


def test_the_report_joins_the_labels_of_the_day_and_writes_its_page(tmp_path, capsys):
    cfg = Config(lake_root=str(tmp_path / "lake"))
    decl = flights(cfg)
    write(cfg, decl, served_log(decl))
    # labels keyed by the query (flight) id; served rows match on the keys and request_time == as_of
    lab = pd.DataFrame(
        {
            "flight_id": [f"F{i}" for i in range(9)] + ["F99"],
            "tailnum": [f"N{i}" for i in range(9)] + ["N0"],
            "origin": "JFK",
            "as_of": [pd.Timestamp(f"{DS}T{8 + i:02d}:00Z") for i in range(8)]
            + [pd.Timestamp(f"{DS}T20:00Z"), pd.Timestamp(f"{DS}T23:00Z")],  # F99: no served row
            "label": LABELS + [1, 1],
        }
    )
    schema = labels_schema(decl)
    labels_table(cfg.lake(), decl).write_partition(
        DS, pa.Table.from_pandas(lab.astype({"label": "int8"}), schema=schema, preserve_index=False), producer={}
    )
    rep = run_shadow_report(cfg, "dep_delay_15", DS)
    assert (rep.rows, rep.compared, rep.labelled, rep.label_note) == (9, 8, 8, None)
    assert rep.auc == pytest.approx({"champion": AUC_CHAMPION, "challenger": AUC_CHALLENGER}, abs=1e-12)
    assert rep.spearman == pytest.approx(RHO, abs=1e-12) and rep.agreement == AGREEMENT
    assert rep.html_path.endswith(f"_reports/shadow/dep_delay_15/ds={DS}.html")
    page = open(rep.html_path).read()
    assert "spearman rank correlation: 0.8095" in page and "agreement at threshold 0.5: 0.7500" in page
    assert "<svg" in page  # the plots
    assert main(["--lake", cfg.lake_root, "shadow", "--model", "dep_delay_15", "--ds", DS]) == 0
    out = capsys.readouterr().out
    assert "8 of 9 served rows with both scores (champion v1, challenger v2)" in out
    auc_line = next(line for line in out.splitlines() if line.startswith("AUC (8 labelled)"))
    assert auc_line.split()[-2:] == ["0.8000", "1.0000"]


def test_without_labels_auc_is_skipped_with_a_note(tmp_path):
    cfg = Config(lake_root=str(tmp_path / "lake"))
    decl = flights(cfg)
    write(cfg, decl, served_log(decl, with_unshadowed=False))
    rep = run_shadow_report(cfg, "dep_delay_15", DS, html_out=False)
    assert rep.auc == {} and rep.label_note == (
        f"skipped: no labels partition labels/dep_delay_15/ds={DS} (not built, or not mature yet)"
    )
    snapshots = cfg.repo().model("repurchase_90d")
    write(cfg, snapshots, served_log(snapshots, with_unshadowed=False))
    rep = run_shadow_report(cfg, "repurchase_90d", DS, html_out=False)
    assert rep.compared == 8 and rep.spearman == pytest.approx(RHO, abs=1e-12)
    assert rep.auc == {} and "queries entity snapshots" in rep.label_note
    assert "AUC: skipped" in rep.table()
    with pytest.raises(FileNotFoundError, match="no published serving log"):
        run_shadow_report(cfg, "repurchase_90d", "2024-03-06")
