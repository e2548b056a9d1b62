"""The bad-input corpus (issue 15, Tests): at least 30 distinct kinds of bad input, each provoked by a test
that asserts the clear error (the ``bad_input(kind)`` marker; see tests/conftest.py). Listed with
``pytest --collect-only -q -m bad_input --bad-input-kinds=-``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent

#: A few kinds that must stay in the corpus (one per layer): dropping their test is a regression.
REQUIRED = {
    "file: a truncated gzip file",
    "file: a byte that is not UTF-8",
    "file: a record with the wrong field count",
    "landing: a declared column missing from the file",
    "validation: a day delivered twice under new ids",
    "validation: a key outside its domain",
    "lake: a manifest edited, its content fingerprint recomputed (signed lake)",
    "sql: a key already in the prediction table",
}


def test_the_corpus_holds_at_least_30_kinds_of_bad_input(tmp_path):
    out = tmp_path / "kinds.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-n",
            "0",
            "-q",
            "-m",
            "bad_input",
            f"--bad-input-kinds={out}",
            "-p",
            "no:cacheprovider",
            str(TESTS),
        ],
        capture_output=True,
        text=True,
        cwd=TESTS.parent,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    kinds = json.loads(out.read_text())
    listing = "\n".join(f"  {k}: {len(v)} test(s)" for k, v in sorted(kinds.items()))
    print(f"{len(kinds)} kinds of bad input:\n{listing}")
    assert len(kinds) >= 30, listing
    assert REQUIRED <= set(kinds), sorted(REQUIRED - set(kinds))
    # every kind is provoked by a collected test (and the collected tests are exactly the marked ones)
    collected = {line for line in proc.stdout.splitlines() if "::" in line}
    assert collected == {t for ids in kinds.values() for t in ids}
