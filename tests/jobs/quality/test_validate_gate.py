"""The lake's publish gate and quarantine: a rejected write never becomes visible, the previous
version stays, and the rejected files keep their would-be manifest and the reason."""

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from jobs.lake import MANIFEST, Lake, MissingPartitionError, StagedPartition

PRODUCER = {"job": "test"}
SCHEMA = pa.schema([pa.field("id", pa.int64(), nullable=False), pa.field("x", pa.float64())])


@pytest.fixture
def table(tmp_path):
    return Lake(str(tmp_path / "lake")).table("things", SCHEMA)


def frame(n, start=0):
    return pd.DataFrame({"id": np.arange(start, start + n), "x": np.arange(n) * 0.5})


class Rejected(Exception):
    pass


def test_gate_that_passes_publishes_and_sees_the_staged_rows_before_readers_do(table):
    table.write_partition("1997-01-01", frame(3), producer=PRODUCER)
    seen = {}

    def gate(staged: StagedPartition):
        seen["rows"] = sum(len(b) for b in staged.iter_batches(batch_size=2))
        seen["batches"] = len(list(staged.iter_batches(batch_size=2)))
        seen["files"] = [os.path.exists(f) for f in staged.files]
        seen["published_rows"] = len(table.read("1997-01-01"))  # readers still see the old version
        seen["current"] = staged.current.rows

    m = table.write_partition("1997-01-01", frame(5), producer=PRODUCER, gate=gate)
    assert seen == {"rows": 5, "batches": 3, "files": [True], "published_rows": 3, "current": 3}
    assert table.manifest("1997-01-01").content_fingerprint == m.content_fingerprint
    assert len(table.read("1997-01-01")) == 5
    assert table.quarantined("1997-01-01") == []


def test_rejected_write_is_quarantined_and_the_previous_version_stays(table):
    old = table.write_partition("1997-01-01", frame(3), producer=PRODUCER)
    where = {}

    def gate(staged):
        where["predicted"] = staged.quarantine_path
        raise Rejected("3 rows are bad")

    with pytest.raises(Rejected) as info:
        table.write_partition("1997-01-01", frame(4, start=10), producer={"job": "bad"}, gate=gate)
    qpath = info.value.quarantine_path
    assert qpath == where["predicted"]
    assert qpath.startswith(table.lake.path("_quarantine", "things", "ds=1997-01-01"))
    assert any(qpath in note for note in info.value.__notes__)
    # the previous version is untouched and still the one readers get
    assert table.manifest("1997-01-01").content_fingerprint == old.content_fingerprint
    assert table.read("1997-01-01")["id"].tolist() == [0, 1, 2]
    # the quarantine holds the staged files, the would-be manifest and the reason
    names = sorted(os.listdir(qpath))
    would_be = json.loads(Path(os.path.join(qpath, MANIFEST)).read_text())
    assert would_be["rows"] == 4 and would_be["producer"] == {"job": "bad"}
    assert names == sorted([MANIFEST, "_reason.json", *(f["name"] for f in would_be["files"])])
    reason = json.loads(Path(os.path.join(qpath, "_reason.json")).read_text())
    assert reason["reason"] == "3 rows are bad" and reason["source"] == "gate"
    assert pd.read_parquet(os.path.join(qpath, would_be["files"][0]["name"]))["id"].tolist() == [10, 11, 12, 13]
    # nothing of the rejected write is left in the partition directory
    assert sorted(os.listdir(table.partition_path("1997-01-01"))) == sorted([MANIFEST, *(f["name"] for f in old.files)])
    assert table.quarantined("1997-01-01") == [qpath]


def test_rejected_first_write_publishes_nothing(table):
    class Bad(Exception):
        @property
        def quarantine_attachments(self):
            return {"_validation.json": {"success": False}}

    def gate(staged):
        raise Bad("no")

    with pytest.raises(Bad) as info:
        table.write_partition("1997-01-02", frame(2), producer=PRODUCER, gate=gate)
    assert not table.exists("1997-01-02")
    assert table.partitions() == []
    with pytest.raises(MissingPartitionError):
        table.read("1997-01-02")
    assert json.loads(Path(os.path.join(info.value.quarantine_path, "_validation.json")).read_text()) == {
        "success": False
    }


def test_interrupted_gate_leaves_nothing_behind(table):
    old = table.write_partition("1997-01-01", frame(3), producer=PRODUCER)

    def gate(staged):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        table.write_partition("1997-01-01", frame(4), producer=PRODUCER, gate=gate)
    assert sorted(os.listdir(table.partition_path("1997-01-01"))) == sorted([MANIFEST, *(f["name"] for f in old.files)])
    assert table.quarantined("1997-01-01") == []


def test_quarantine_unpublishes_a_published_partition(table):
    m = table.write_partition("1997-01-01", frame(3), producer=PRODUCER)
    table.write_partition("1997-01-02", frame(3), producer=PRODUCER)
    path = table.quarantine("1997-01-01", "amounts are negative", attachments={"_validation.json": {"ok": 0}})
    assert not table.exists("1997-01-01")
    assert table.partitions() == ["1997-01-02"]
    with pytest.raises(MissingPartitionError, match="1997-01-01"):
        table.files("1997-01-01", "1997-01-02")
    assert os.listdir(table.partition_path("1997-01-01")) == []
    assert sorted(os.listdir(path)) == sorted(
        [MANIFEST, "_reason.json", "_validation.json", *(f["name"] for f in m.files)]
    )
    assert json.loads(Path(os.path.join(path, MANIFEST)).read_text())["content_fingerprint"] == m.content_fingerprint
    reason = json.loads(Path(os.path.join(path, "_reason.json")).read_text())
    assert (reason["reason"], reason["source"], reason["missing_files"]) == ("amounts are negative", "published", [])
    # published again and quarantined again: a second, separate quarantine entry
    table.write_partition("1997-01-01", frame(2), producer=PRODUCER)
    second = table.quarantine("1997-01-01", "still bad")
    assert second != path and table.quarantined("1997-01-01") == sorted([path, second])


def test_quarantine_of_a_missing_partition_raises(table):
    with pytest.raises(MissingPartitionError):
        table.quarantine("1997-01-05", "nothing there")


def test_quarantine_of_a_partition_with_a_corrupt_manifest_takes_every_part_file(table):
    m = table.write_partition("1997-01-01", frame(3), producer=PRODUCER)
    pdir = table.partition_path("1997-01-01")
    with open(os.path.join(pdir, MANIFEST), "w") as fh:
        fh.write("{not json")
    path = table.quarantine("1997-01-01", "corrupt manifest")
    assert sorted(os.listdir(path)) == sorted([MANIFEST, "_reason.json", *(f["name"] for f in m.files)])
    assert os.listdir(pdir) == []


def test_quarantine_rejects_attachment_names_that_would_clobber_files(table):
    table.write_partition("1997-01-01", frame(1), producer=PRODUCER)
    with pytest.raises(Exception, match="attachment"):
        table.quarantine("1997-01-01", "x", attachments={MANIFEST: {}})
    assert table.exists("1997-01-01") and table.quarantined("1997-01-01") == []
