"""The shipped ``features`` zip and the kernel check, without a cluster (``test_clusters.py`` has them on one)."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from clusters import REPO, jobs_only_path

from features.registry import get
from features.spec import kernel_fingerprint, kernel_source
from jobs.engines import KernelMismatchError
from jobs.engines.shipping import check_reports, features_zip, ship_to_dask, verify_dask

FP = kernel_fingerprint()


def test_the_zip_is_the_package_by_content_and_deterministic():
    path = features_zip()
    assert features_zip() == path and Path(path).name.startswith("lockstep_features-")
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        assert z.read("features/kernel.py") == (REPO / "features" / "kernel.py").read_bytes() == kernel_source()
        assert {i.date_time for i in z.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    want = sorted(
        "features/" + p.relative_to(REPO / "features").as_posix()
        for p in (REPO / "features").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    )
    assert names == want and "features/projects/cdnow/__init__.py" in names


IMPORT_FROM_ZIP = """
import json, sys
from jobs.engines.shipping import kernel_report
from features.registry import get
print(json.dumps({**kernel_report(), "set": get("customer_activity_v1").fingerprint, "path": sys.path[:2]}))
"""


def test_a_process_with_only_the_zip_computes_the_same_fingerprints(tmp_path):
    """Reading kernel.py through the loader works from a zip: the report and every set fingerprint agree."""
    zip_path = features_zip()
    env = {**os.environ, "PYTHONPATH": f"{zip_path}{os.pathsep}{jobs_only_path(tmp_path / 'code')}"}
    res = subprocess.run(
        [sys.executable, "-c", IMPORT_FROM_ZIP], capture_output=True, text=True, env=env, cwd=tmp_path, check=False
    )
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout)
    assert got["origin"] == f"{zip_path}/features/kernel.py"
    assert got["kernel"] == FP and got["set"] == get("customer_activity_v1").fingerprint


def test_check_reports_names_every_refused_worker_and_both_fingerprints():
    good = {"kernel": FP, "origin": "/a/features/kernel.py"}
    check_reports({"tcp://127.0.0.1:1": good, "tcp://127.0.0.1:2": good})  # all equal: no error
    bad = {"kernel": "0123456789abcdef", "origin": "/old/features/kernel.py"}
    with pytest.raises(KernelMismatchError) as err:
        check_reports({"tcp://127.0.0.1:1": good, "tcp://127.0.0.1:2": bad, "tcp://127.0.0.1:3": bad})
    assert str(err.value) == (
        f"kernel version mismatch: this driver runs features/kernel.py {FP}, but 2 of 3 worker(s) import another: "
        "worker tcp://127.0.0.1:2 has kernel 0123456789abcdef (imports /old/features/kernel.py); "
        "worker tcp://127.0.0.1:3 has kernel 0123456789abcdef (imports /old/features/kernel.py). Nothing was "
        "computed; restart those workers so they import the shipped package, or install the driver's kernel there"
    )
    assert sorted(err.value.workers) == ["tcp://127.0.0.1:2", "tcp://127.0.0.1:3"]
    # raised in a task, it travels to the driver pickled: same type, fields and text
    back = pickle.loads(pickle.dumps(err.value))
    assert type(back) is KernelMismatchError and str(back) == str(err.value) and back.workers == err.value.workers


@pytest.mark.dask
def test_a_local_cluster_of_this_process_is_checked_but_not_shipped_to(dask_client):
    """Its scheduler runs here: an UploadFile plugin would reload this process's ``features`` from a
    zip in the scheduler's temp directory (deleted when the cluster closes). Its workers were spawned
    with this process's sys.path, and say so."""
    import features

    before = features.__file__
    assert ship_to_dask(dask_client) is None
    reports = verify_dask(dask_client)
    assert len(reports) == 2 and {r["origin"] for r in reports.values()} == {str(REPO / "features" / "kernel.py")}
    assert features.__file__ == before == str(REPO / "features" / "__init__.py")
    # (a Spark session of this process may have put its own copy on sys.path: pyspark's addPyFile does)
    assert not any("lockstep_features-" in p and "dask-scratch-space" in p for p in sys.path)
