"""Validate lake partitions against their Great Expectations suites, out of core.

One partition (or each partition of a date range) is read in bounded pandas batches
(``Table``'s verified files, ``batch_rows`` rows at a time) and evaluated by
``jobs.quality.combine``: row-level expectations by GE's pandas datasource batch by batch,
table-level ones (row counts, uniqueness across the whole partition, null rates, means, the
Parquet schema, the manifest's producer) combined over all batches, so the verdict and the counts
do not depend on the batch size. Suites: ``expectations/<dataset>.json`` templates plus checks derived
from the declarations (``jobs.quality.suites``, ``jobs.quality.derive``): raw_events from a source,
feature_snapshots from a feature set, training_sets / predictions / serving_logs from a model.

Every validation stores its result next to the partition (``<partition>/_validation.json``) and
renders GE Data Docs under ``<lake>/_data_docs/``. What is validated is the day's newest version: the
candidate the lake staged over a validated version (``Table.pending``), else the published one. A pass
promotes the candidate (``Table.promote``: the swap) or marks the published version validated
(``Table.mark_validated``), so the next re-write of the day is staged. A failure:

1. moves the failed version to ``<lake>/_quarantine/<table>/ds=<ds>/<writeid>/`` (with its manifest
   and ``_validation.json``), so no downstream reader sees it: a candidate leaves the validated
   version published and readable (``Table.reject``), a published version leaves the day empty;
2. sends an alert (``jobs.alerts``: always a line in ``<lake>/_alerts/alerts.jsonl``);
3. raises ``DataQualityError`` naming the dataset, the partition, each failed expectation with its
   unexpected count and sample values, the report and the quarantine.

Jobs that produce a dataset validate before publishing: ``write_partition(..., gate=gate_for(cfg,
dataset))`` quarantines the staged files instead of publishing them. Without a gate (the DAGs: a write
task, then a validate task), the lake stages a re-write of a validated day and ``validate_partition``
swaps it in or quarantines it: readers never see an unvalidated replacement.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd
import pyarrow as pa

from jobs.lake import (
    CorruptPartitionError,
    LakeError,
    Manifest,
    MissingPartitionError,
    StagedPartition,
    Table,
    check_ds,
    day_range,
    normalise_schema,
)
from jobs.quality import history
from jobs.quality.combine import Outcome, evaluate
from jobs.quality.suites import (
    DATASETS,
    Suite,
    load_suite,
    resolve,
)

log = logging.getLogger(__name__)

RESULT_FILE = "_validation.json"
#: Rows per pandas batch (env LOCKSTEP_VALIDATE_BATCH_ROWS): memory is a few batches, not a table.
DEFAULT_BATCH_ROWS = 100_000
#: Failed expectations listed in an error message (all of them are in the report).
MAX_LISTED = 25

__all__ = [
    "DATASETS",
    "DataQualityError",
    "ValidationResult",
    "gate_for",
    "load_suite",
    "partition_parameters",
    "suite_for",
    "validate_frame_batches",
    "validate_partition",
    "validate_range",
]


# ---- results --------------------------------------------------------------------------------
@dataclass
class ValidationResult:
    """The verdict of one suite over one partition."""

    dataset: str
    suite: str
    table: str
    ds: str | None
    success: bool
    rows: int
    batches: int
    outcomes: list[Outcome]
    parameters: dict = field(default_factory=dict)
    manifest: dict | None = None
    feature_set: str | None = None
    #: The declarations the suite was derived from (raw_events: a source; training_sets,
    #: predictions, serving_logs: a model).
    source: str | None = None
    model: str | None = None
    validated_at: str = ""
    run_id: str = ""
    report_path: str | None = None
    result_path: str | None = None
    quarantine_path: str | None = None
    alert: dict | None = None
    #: The version that stays published after this one failed: {content_fingerprint, validated}.
    kept: dict | None = None
    #: ``"table/ds=D"`` -> quarantine URL of each partition withdrawn because it was built from this one.
    withdrawn: dict = field(default_factory=dict)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.success]

    @property
    def partition(self) -> str:
        return f"{self.table}/ds={self.ds}" if self.ds else self.table

    def describe(self, max_listed: int = MAX_LISTED) -> str:
        """A readable verdict: what failed, how many rows, sample values, where the report is."""
        evaluated = [o for o in self.outcomes if not o.skipped]
        verdict = (
            f"passed all {len(evaluated)} expectations"
            if self.success
            else f"FAILED {len(self.failed)} of {len(evaluated)} expectations"
        )
        head = (
            f"data quality {self.dataset} {self.partition}: {verdict} "
            f"({self.rows} rows in {self.batches} batch{'es' if self.batches != 1 else ''}, "
            f"suite {self.suite})"
        )
        lines = [head]
        for i, o in enumerate(self.failed[:max_listed], 1):
            lines.append(f"  {i}. {o.headline()} [{o.risk}]: {o.summary()}")
        if len(self.failed) > max_listed:
            lines.append(f"  ... and {len(self.failed) - max_listed} more (see the report)")
        lines.append(f"report: {self.report_path or '(not rendered)'}")
        if self.quarantine_path:
            lines.append(f"quarantined: {self.quarantine_path} (not visible to readers of {self.table})")
        if not self.success and self.kept:
            which = "validated" if self.kept.get("validated") else "previous"
            lines.append(f"kept: {self.partition} stays at its {which} version {self.kept['content_fingerprint'][:16]}")
        return "\n".join(lines)

    def to_json_dict(self) -> dict:
        d = asdict(self)
        d["outcomes"] = [o.to_json_dict() for o in self.outcomes]
        d["failed"] = [o.id for o in self.failed]
        return json.loads(json.dumps(d, default=str))

    @classmethod
    def from_json_dict(cls, d: dict) -> ValidationResult:
        d = dict(d)
        d.pop("failed", None)
        d["outcomes"] = [Outcome(**o) for o in d["outcomes"]]
        return cls(**d)

    def to_gx(self):
        """The result as GE's ``ExpectationSuiteValidationResult`` (what Data Docs render)."""
        from great_expectations.core.expectation_validation_result import (
            ExpectationSuiteValidationResult,
        )

        results = [o.to_gx() for o in self.outcomes]
        n, ok = len(results), sum(1 for o in self.outcomes if o.success)
        meta = {
            "run_id": {"run_name": self._run_name(), "run_time": self.validated_at},
            "batch_spec": {
                "table": self.table,
                "ds": self.ds or "",
                "rows": self.rows,
                "batches": self.batches,
                "dataset": self.dataset,
            },
            "lockstep": {
                "parameters": self.parameters,
                "quarantine": self.quarantine_path,
                "content_fingerprint": (self.manifest or {}).get("content_fingerprint"),
            },
        }
        return ExpectationSuiteValidationResult(
            success=self.success,
            results=results,
            suite_name=self.suite,
            meta=meta,
            suite_parameters=self.parameters,
            statistics={
                "evaluated_expectations": n,
                "successful_expectations": ok,
                "unsuccessful_expectations": n - ok,
                "success_percent": 100.0 * ok / n if n else 100.0,
            },
        )

    def _run_name(self) -> str:
        return f"ds={self.ds}" if self.ds else "frames"


class DataQualityError(Exception):
    """A partition failed its suite. ``str()`` says what failed, where, and where the report is."""

    def __init__(self, result: ValidationResult):
        super().__init__(result.dataset, result.ds)
        self.result = result

    def __str__(self) -> str:
        return self.result.describe()

    def __reduce__(self):  # picklable across processes (Airflow, Dask)
        return (_error_from_json, (self.result.to_json_dict(),))

    @property
    def dataset(self) -> str:
        return self.result.dataset

    @property
    def ds(self) -> str | None:
        return self.result.ds

    @property
    def failed(self) -> list[Outcome]:
        return self.result.failed

    @property
    def report_path(self) -> str | None:
        return self.result.report_path

    @property
    def quarantine_path(self) -> str | None:
        """Where the partition went (the lake sets it after moving a gated write)."""
        return self.result.quarantine_path

    @quarantine_path.setter
    def quarantine_path(self, value: str | None) -> None:
        self.result.quarantine_path = value

    @property
    def quarantine_attachments(self) -> dict[str, Any]:
        """Files the lake writes next to a quarantined gated write."""
        return {RESULT_FILE: self.result.to_json_dict()}

    def alert_fields(self) -> dict[str, Any]:
        """What ``jobs.alerts`` puts in an alert."""
        r = self.result
        return {
            "title": f"data quality failed: {r.dataset} {r.partition}",
            "what": "data quality",
            "where": r.partition,
            "dataset": r.dataset,
            "partition": r.partition,
            "failed": [o.headline() for o in r.failed],
            "reason": str(self),
            "report": r.report_path,
            "quarantine": r.quarantine_path,
        }


def _error_from_json(d: dict) -> DataQualityError:
    return DataQualityError(ValidationResult.from_json_dict(d))


# ---- validation -----------------------------------------------------------------------------
def suite_for(cfg, dataset: str, *, source=None, feature_set=None, model=None) -> Suite:
    """The suite of ``dataset`` derived from the named declaration in ``cfg.repo()`` (see
    ``jobs.quality.suites.declarations_for`` for the defaults)."""
    repo = cfg.repo() if cfg is not None else None
    return load_suite(dataset, feature_set, source=source, model=model, repo=repo)


def table_name(cfg, dataset: str, *, source=None, feature_set=None, model=None) -> str:
    """The lake table a dataset's suite validates by default (e.g. ``feature_snapshots/<set>``)."""
    return suite_for(cfg, dataset, source=source, feature_set=feature_set, model=model).table


def validate_frame_batches(
    dataset: str | Suite,
    batches: Iterable[pd.DataFrame],
    *,
    schema: pa.Schema | None = None,
    params: dict | None = None,
    manifest: dict | Manifest | None = None,
    feature_set: str | None = None,
    source: str | None = None,
    model: str | None = None,
    table: str | None = None,
    ds: str | None = None,
    reread: Callable[[], Iterator[pd.DataFrame]] | None = None,
    sample_size: int = 10,
    max_keys_in_memory: int | None = None,
) -> ValidationResult:
    """Validate a stream of DataFrames (one partition's rows) against a dataset's suite.

    Pure: no lake, no quarantine, no alert. ``schema`` is the stored Arrow schema (default: that of
    the first batch); ``params`` bind the suite's ``$PARAMETER``s — expectations whose parameters
    are missing are reported as skipped. ``manifest`` feeds the manifest-level expectations.
    ``reread`` gives the batches again, to show actual values of duplicated hashed keys.
    """
    suite = dataset if isinstance(dataset, Suite) else load_suite(dataset, feature_set, source=source, model=model)
    manifest = asdict(manifest) if isinstance(manifest, Manifest) else manifest
    params = dict(params or {})
    it = iter(batches)
    if schema is None:
        first = next(it, None)
        if first is None:
            raise ValueError("no batches to validate and no schema")
        schema = _schema_of(first)
        it = _chain([first], it)
    resolved, skipped = [], {}
    for e in suite.expectations:
        r, missing = resolve(e, params)
        resolved.append(r)
        if missing:
            skipped[e["id"]] = f"no value for parameter(s) {missing}"
    extra = {} if max_keys_in_memory is None else {"max_keys_in_memory": max_keys_in_memory}
    outcomes, rows, n = evaluate(
        resolved, it, schema, manifest=manifest, skipped=skipped, reread=reread, sample_size=sample_size, **extra
    )
    return ValidationResult(
        dataset=suite.dataset,
        suite=suite.name,
        table=table or suite.table,
        ds=ds,
        success=all(o.success for o in outcomes),
        rows=rows,
        batches=n,
        outcomes=outcomes,
        parameters=_jsonable(params),
        manifest=manifest,
        feature_set=suite.feature_set,
        source=suite.source,
        model=suite.model,
        validated_at=_now().isoformat(),
        run_id=uuid.uuid4().hex,
    )


def partition_parameters(
    table: Table, ds: str, *, manifest: Manifest | None, validated_at: pd.Timestamp | None = None, repo=None
) -> dict[str, Any]:
    """The suite parameters of partition ``ds`` of ``table`` (see each suite's meta.lockstep.parameters).

    ``known_fingerprints``: every feature set's fingerprint in ``repo`` (default ``features.repo.load()``)
    and every model's (the "+"-joined fingerprints of a multi-set model)."""
    if repo is None:
        from features import repo as repo_mod

        repo = repo_mod.load()
    fingerprints = set(repo.known_fingerprints()) | {m.fingerprint for m in repo.models.values()}

    start = pd.Timestamp(ds, tz="UTC")
    first = table.first_ds()
    previous = _previous_manifest(table, ds)
    return {
        "partition_start": start,
        "partition_end": start + pd.Timedelta(days=1),
        "partition_last": start + pd.Timedelta(days=1) - pd.Timedelta(microseconds=1),
        "data_start": pd.Timestamp(min(first, ds) if first else ds, tz="UTC"),
        "previous_rows": previous.rows if previous else 0,
        "manifest_rows": manifest.rows if manifest else None,
        "known_fingerprints": sorted(fingerprints),
        "validated_at": validated_at if validated_at is not None else _now(),
    }


def validate_partition(
    cfg,
    dataset: str,
    ds: str | dt.date,
    *,
    source: str | None = None,
    feature_set: str | None = None,
    model: str | None = None,
    table: str | None = None,
    batch_rows: int | None = None,
    quarantine: bool = True,
    alert: bool = True,
    notifier=None,
    docs: bool = True,
    docs_index: bool = True,
    raise_on_failure: bool = True,
    max_keys_in_memory: int | None = None,
) -> ValidationResult:
    """Validate the newest version of partition ``ds`` of ``dataset``'s table without loading it into memory.

    The newest version is the candidate staged over a validated version (``Table.pending``), else the
    published one. On success the result is stored as ``<partition>/_validation.json`` and the version
    becomes the validated published one (a candidate is promoted). On failure the version is
    quarantined (unless ``quarantine=False``: a candidate then stays pending, a published version
    published) — a candidate's quarantine leaves the validated version readable —, an alert is sent
    (unless ``alert=False``) and ``DataQualityError`` is raised (unless ``raise_on_failure=False``). A
    partition that does not exist raises ``MissingPartitionError``; one whose files do not match its
    manifest fails validation (it is corrupt). ``docs_index=False`` skips rebuilding the Data Docs index page.

    The suite is derived from the declaration named by ``source`` (raw_events), ``feature_set``
    (feature_snapshots) or ``model`` (training_sets, predictions, serving_logs) in ``cfg.repo()``;
    unnamed, the repo's default one (see ``jobs.quality.suites.declarations_for``).
    """
    suite = suite_for(cfg, dataset, source=source, feature_set=feature_set, model=model)
    lake = cfg.lake()
    tbl = lake.table(table or suite.table)  # no schema: read the files as written, drift included
    ds = _ds(ds)
    conclude = {"docs": docs, "docs_index": docs_index, "alert": alert, "notifier": notifier}
    conclude.update(raise_on_failure=raise_on_failure, quarantine=quarantine, cfg=cfg)
    candidate = tbl.pending(ds)
    if candidate is not None:
        result = _validate_staged(suite, candidate, cfg.repo(), batch_rows, max_keys_in_memory, verify=True)
        return _conclude(suite, tbl, result, stage=candidate, **conclude)
    try:
        manifest = tbl.manifest(ds)
    except CorruptPartitionError as exc:
        result = _unreadable(suite, tbl, ds, None, exc)
    else:
        result = _judge(suite, tbl, ds, manifest, lambda: tbl.dataset(ds), cfg.repo(), batch_rows, max_keys_in_memory)
    return _conclude(suite, tbl, result, stage="published", **conclude)


def validate_range(
    cfg,
    dataset: str,
    ds_from: str | dt.date,
    ds_to: str | dt.date | None = None,
    *,
    skip_missing: bool = False,
    workers: int = 1,
    **kwargs,
) -> list[ValidationResult]:
    """``validate_partition`` for every published day of ``[ds_from, ds_to]``, in order.

    ``workers > 1``: the days are split into that many runs of consecutive days, each validated in its
    own process (GE's per-partition overhead is CPU-bound Python: on 2 cores two processes validate a
    long history in about half the time). Each day is judged exactly as alone — a day's checks read only
    published earlier days and its own version — and the results come back in day order; the last day
    is validated here after the others (it rebuilds the Data Docs index). One difference when a day
    FAILS: a later day in another process may be judged against the failing day's version before it is
    quarantined (its history checks read it); one process judges it against the days still published.

    One bad day does not stop the others: every published partition is validated (and each failed
    one quarantined and alerted) before anything is raised. Then days without a published partition
    raise one ``MissingPartitionError`` naming all of them (``skip_missing=True``: they are left out of
    the results, for the caller to report), else a failure raises one ``DataQualityError`` for the
    first failed day, its notes listing all of them (``raise_on_failure=False``: the results say).
    """
    raise_on_failure = kwargs.pop("raise_on_failure", True)
    days = day_range(ds_from, ds_to)
    names = {k: kwargs.get(k) for k in ("source", "feature_set", "model")}
    suite = suite_for(cfg, dataset, **names)
    tbl = cfg.lake().table(kwargs.get("table") or suite.table)
    present = [d for d in days if _published_or_corrupt(tbl, d)]
    if workers > 1 and len(present) > 2:
        results = _validate_in_processes(cfg, dataset, present[:-1], workers, kwargs)
        results.append(validate_partition(cfg, dataset, present[-1], raise_on_failure=False, **kwargs))
    else:
        results = [
            validate_partition(cfg, dataset, d, raise_on_failure=False, docs_index=d == present[-1], **kwargs)
            for d in present
        ]
    failed = [r for r in results if not r.success]
    failures = f"{len(failed)} of {len(days)} partitions failed: " + ", ".join(r.ds for r in failed)
    if len(present) < len(days) and not skip_missing:
        err = MissingPartitionError(tbl.name, [d for d in days if d not in present])
        if failed:
            err.add_note(failures)
        raise err
    if failed and raise_on_failure:
        err = DataQualityError(failed[0])
        if len(failed) > 1:
            err.add_note(failures)
        raise err
    return results


def _validate_days(cfg, dataset: str, days: list[str], kwargs: dict) -> list[ValidationResult]:
    """One worker's run of consecutive days (``validate_range(workers=N)``): no Data Docs index."""
    return [validate_partition(cfg, dataset, d, raise_on_failure=False, docs_index=False, **kwargs) for d in days]


def _validate_in_processes(cfg, dataset: str, days: list[str], workers: int, kwargs: dict) -> list[ValidationResult]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    n = min(workers, len(days))
    size = -(-len(days) // n)
    runs = [days[i : i + size] for i in range(0, len(days), size)]  # the caller validates the last day itself
    # spawn: the caller may hold threads (Airflow, Dask, a JVM) that a fork would copy mid-state
    with ProcessPoolExecutor(max_workers=len(runs), mp_context=multiprocessing.get_context("spawn")) as pool:
        done = pool.map(_validate_days, [cfg] * len(runs), [dataset] * len(runs), runs, [kwargs] * len(runs))
        return [r for run in done for r in run]


def gate_for(
    cfg,
    dataset: str,
    *,
    source: str | None = None,
    feature_set: str | None = None,
    model: str | None = None,
    batch_rows: int | None = None,
    alert: bool = True,
    notifier=None,
    docs: bool = True,
    max_keys_in_memory: int | None = None,
) -> Callable[[StagedPartition], None]:
    """A ``write_partition`` gate: validate the staged files before the manifest is published.

    ``table.write_partition(ds, data, producer=..., gate=gate_for(cfg, "feature_snapshots"))``
    publishes only a partition that passes; otherwise the lake quarantines the staged files and
    ``DataQualityError`` propagates (after an alert). The suite is derived from the named
    declaration as in :func:`validate_partition`.
    """
    suite = suite_for(cfg, dataset, source=source, feature_set=feature_set, model=model)
    repo = cfg.repo()

    def gate(staged: StagedPartition) -> None:
        result = _validate_staged(suite, staged, repo, batch_rows, max_keys_in_memory, verify=False)
        if not result.success:
            result.quarantine_path = staged.quarantine_path  # where the lake moves it next
        _conclude(
            suite,
            staged.table,
            result,
            docs=docs,
            docs_index=True,
            alert=alert,
            notifier=notifier,
            raise_on_failure=True,
            quarantine=True,
            stage="gate",
            gated=staged,
        )

    gate.__qualname__ = f"gate_for({dataset!r})"
    return gate


# ---- internals ------------------------------------------------------------------------------
def _validate_staged(
    suite: Suite, staged: StagedPartition, repo, batch_rows, max_keys_in_memory, *, verify: bool
) -> ValidationResult:
    """The verdict on a staged version (a gated write, or a pending candidate: ``verify`` its files first)."""
    return _judge(
        suite,
        staged.table,
        staged.ds,
        staged.manifest,
        staged.dataset,
        repo,
        batch_rows,
        max_keys_in_memory,
        prepare=staged.verify if verify else None,
    )


def _judge(
    suite: Suite, tbl: Table, ds: str, manifest, open_dataset, repo, batch_rows, max_keys_in_memory, prepare=None
) -> ValidationResult:
    """Validate the version ``open_dataset()`` opens (``manifest``'s files; ``prepare`` first, e.g. a
    checksum pass) in bounded batches; files that cannot be read are an unreadable verdict."""
    params = partition_parameters(tbl, ds, manifest=manifest, repo=repo)
    size = _batch_rows(batch_rows)
    try:
        if prepare is not None:
            prepare()
        dataset_ = open_dataset()  # verifies sizes, checksums, footers
        extra, details = history.parameters(suite.expectations, tbl, ds, dataset_)
        params.update(extra)
        result = validate_frame_batches(
            suite,
            _iter(dataset_, size),
            schema=dataset_.schema,
            params=params,
            manifest=manifest,
            table=tbl.name,
            ds=ds,
            reread=lambda: _iter(open_dataset(), size),
            max_keys_in_memory=max_keys_in_memory,
        )
        return _explain(result, details)
    except (CorruptPartitionError, pa.ArrowException, OSError) as exc:
        return _unreadable(suite, tbl, ds, manifest, exc, params)


def _conclude(
    suite: Suite,
    tbl: Table,
    result: ValidationResult,
    *,
    docs: bool,
    docs_index: bool,
    alert: bool,
    notifier,
    raise_on_failure: bool,
    quarantine: bool,
    stage: str | StagedPartition,
    gated: StagedPartition | None = None,
    cfg=None,
) -> ValidationResult:
    """Accept or quarantine, render, store, alert, raise. ``stage``: "published" (the published version
    was validated: marked validated, or quarantined), a pending candidate (promoted, or rejected: the
    published version stays), or "gate" (``gated``: the lake publishes or quarantines the staged files
    when the gate returns or raises). ``quarantine=False``: report only, a failed version stays where it is."""
    lake = tbl.lake
    candidate = stage if isinstance(stage, StagedPartition) else None
    if not result.success:
        kept = candidate.current if candidate is not None else gated.current if gated is not None else None
        if kept is not None:
            result.kept = {"content_fingerprint": kept.content_fingerprint, "validated": tbl.validated(result.ds)}
    if docs:
        try:
            from jobs.quality import gx

            result.report_path = gx.render_docs(
                lake,
                suite.to_gx(),
                result.to_gx(),
                run_name=result._run_name(),
                batch_identifier=tbl.name.replace("/", "."),
                run_time=dt.datetime.fromisoformat(result.validated_at),
                build_index=docs_index,
            )
        except Exception as exc:  # noqa: BLE001 - a broken report must not hide the verdict
            log.warning("rendering Data Docs for %s failed: %r", result.partition, exc)
    if result.success and candidate is not None:
        tbl.promote(result.ds, candidate.write_id)  # the swap; LakeError if a newer write replaced it
    elif result.success and stage == "published":
        tbl.mark_validated(result.ds, Manifest(**result.manifest))
    elif quarantine and stage != "gate":
        headline, attachments = result.describe().splitlines()[0], {RESULT_FILE: result.to_json_dict()}
        try:
            if candidate is not None:
                result.quarantine_path = tbl.reject(result.ds, candidate.write_id, headline, attachments)
            else:
                result.quarantine_path = tbl.quarantine(result.ds, headline, attachments=attachments)
        except LakeError as exc:
            log.error("could not quarantine %s: %r", result.partition, exc)
    withdrawal = None
    if cfg is not None and candidate is None and stage == "published" and result.quarantine_path:
        # quarantine follows lineage: what was published from this version is withdrawn too
        from jobs.lineage import withdraw

        try:
            withdrawal = withdraw(cfg, tbl.name, result.ds, headline, alert=False)
            result.withdrawn = dict(withdrawal.withdrawn)
        except Exception as exc:  # noqa: BLE001 - the verdict must still be reported
            log.error("withdrawing what was built from %s failed: %r", result.partition, exc)
    if result.quarantine_path:  # written there by tbl.quarantine, or by the lake after the gate
        result.result_path = f"{result.quarantine_path}/{RESULT_FILE}"
    elif candidate is not None and not result.success:
        # Report only: the candidate stays pending and its verdict is in the report; the partition's
        # result file stays that of the validated version readers get.
        result.result_path = None
    else:
        # Next to the manifest (a gated write: just before it is published). The result carries
        # the content fingerprint, so a stale one is recognisable after the partition is rewritten.
        result.result_path = f"{tbl.partition_path(result.ds)}/{RESULT_FILE}"
        lake.fs.pipe_file(result.result_path, json.dumps(result.to_json_dict(), indent=2).encode())
    if result.success:
        return result
    error = DataQualityError(result)
    details = {}
    if withdrawal is not None:
        error.add_note("\n".join(withdrawal.describe().splitlines()[1:]))
        details = {
            "withdrawn": list(withdrawal.withdrawn),
            "rejected_candidates": list(withdrawal.rejected),
            "sql_rows_deleted": withdrawal.sql_rows,
        }
    if alert:
        try:
            from jobs.alerts import Notifier

            result.alert = (notifier or Notifier.for_lake(lake)).send_error(error, source="job", **details)
        except Exception as exc:  # noqa: BLE001 - alerting must never hide the data error
            log.error("alerting on %s failed: %r", result.partition, exc)
    if raise_on_failure:
        raise error
    return result


def _explain(result: ValidationResult, details: dict[str, list[str]]) -> ValidationResult:
    """Attach what a failed check against earlier partitions found (``jobs.quality.history``)."""
    for o in result.failed:
        lines = details.get(o.meta.get(history.EARLIER))
        if lines:
            o.details["history"] = lines
    return result


def _unreadable(
    suite: Suite, tbl: Table, ds: str, manifest: Manifest | None, exc: BaseException, params: dict | None = None
) -> ValidationResult:
    """The verdict on a partition whose files cannot be read as their manifest says."""
    outcomes = []
    for e in suite.expectations:
        o = Outcome(
            id=e["id"],
            type=e["type"],
            kwargs=resolve(e, params or {})[0]["kwargs"],
            notes=e.get("notes") or "",
            meta=dict(e.get("meta") or {}),
        )
        if e["type"] == "expect_table_row_count_to_equal" and o.risk == "corrupt or truncated partition":
            o.success, o.error = False, f"{type(exc).__name__}: {exc}"
            o.observed = "unreadable"
        else:
            o.skipped = "the partition's files are unreadable"
        outcomes.append(o)
    if all(o.success for o in outcomes if not o.skipped):  # a suite without the integrity check
        outcomes[0].success, outcomes[0].error, outcomes[0].skipped = False, f"{exc}", None
    return ValidationResult(
        dataset=suite.dataset,
        suite=suite.name,
        table=tbl.name,
        ds=ds,
        success=False,
        rows=0,
        batches=0,
        outcomes=outcomes,
        parameters=_jsonable(params or {}),
        manifest=asdict(manifest) if manifest else None,
        feature_set=suite.feature_set,
        source=suite.source,
        model=suite.model,
        validated_at=_now().isoformat(),
        run_id=uuid.uuid4().hex,
    )


def _iter(dataset, batch_size: int) -> Iterator[pd.DataFrame]:
    empty = True
    for batch in dataset.to_batches(batch_size=batch_size):
        if batch.num_rows:
            empty = False
            yield batch.to_pandas()
    if empty:
        yield dataset.to_table().to_pandas()


def _previous_manifest(table: Table, ds: str) -> Manifest | None:
    day_before = (dt.date.fromisoformat(ds) - dt.timedelta(days=1)).isoformat()
    try:
        return table.manifest(day_before)
    except LakeError:
        pass
    earlier = [d for d in table.partitions() if d < ds]
    return table.manifest(earlier[-1]) if earlier else None


def _published_or_corrupt(tbl: Table, ds: str) -> bool:
    """Whether ``validate_partition`` has a version of ``ds`` to judge (published, corrupt or pending)."""
    try:
        tbl.manifest(ds)
        return True
    except CorruptPartitionError:
        return True
    except LakeError:
        pass
    try:
        return tbl.pending(ds) is not None
    except CorruptPartitionError:
        return True


def _schema_of(df: pd.DataFrame) -> pa.Schema:
    # the lake's stored form: us/UTC timestamps, plain strings
    return normalise_schema(pa.Schema.from_pandas(df, preserve_index=False))


def _chain(first: list, rest: Iterator) -> Iterator:
    yield from first
    yield from rest


def _batch_rows(batch_rows: int | None) -> int:
    if batch_rows is None:
        raw = os.environ.get("LOCKSTEP_VALIDATE_BATCH_ROWS", "").strip()
        batch_rows = int(raw) if raw else DEFAULT_BATCH_ROWS
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be >= 1, got {batch_rows}")
    return batch_rows


def _ds(ds) -> str:
    return check_ds(ds if isinstance(ds, (str, dt.date)) else str(ds))


def _now() -> pd.Timestamp:
    return pd.Timestamp.now(tz="UTC")


def _jsonable(params: dict) -> dict:
    return json.loads(json.dumps(params, default=lambda v: v.isoformat() if hasattr(v, "isoformat") else str(v)))
