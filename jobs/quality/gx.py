"""The Great Expectations side: one ephemeral context per process, pandas batch validation,
and Data Docs under the lake.

GE takes seconds to import and set up, so the context, its pandas datasource and batch
definition are created once per process and shared by every validation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import urllib.parse
from typing import Any

log = logging.getLogger(__name__)

DOCS_DIR = "_data_docs"
#: Validation results listed on the Data Docs index page (the newest first).
INDEX_LIMIT = 300
_lock = threading.RLock()
_state: dict[str, Any] = {}


def context():
    """The process's ephemeral GE context (created on first use)."""
    with _lock:
        if "context" not in _state:
            import great_expectations as gx
            from great_expectations.data_context.types.base import ProgressBarsConfig

            ctx = gx.get_context(mode="ephemeral")
            ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
            ctx.config.analytics_enabled = False
            source = ctx.data_sources.add_pandas(name="lockstep")
            asset = source.add_dataframe_asset(name="partition_batch")
            _state["batch_definition"] = asset.add_batch_definition_whole_dataframe("batch")
            _state["context"] = ctx
        return _state["context"]


def validate_frame(suite, df, sample_size: int) -> dict[str, Any]:
    """Validate one pandas frame against a ``gx.ExpectationSuite``; results by expectation id."""
    context()
    batch = _state["batch_definition"].get_batch(batch_parameters={"dataframe": df})
    res = batch.validate(suite, result_format={"result_format": "BASIC", "partial_unexpected_count": sample_size})
    return {r.expectation_config.id: r for r in res.results}


def exception_message(result) -> str | None:
    """The first exception message of a GE result, or None."""
    info = result.exception_info or {}
    if info.get("raised_exception"):
        return info.get("exception_message") or "exception"
    for v in info.values():
        if isinstance(v, dict) and v.get("raised_exception"):
            return v.get("exception_message") or "exception"
    return None


def render_docs(
    lake, suite, suite_result, run_name: str, batch_identifier: str, run_time, build_index: bool = True
) -> str:
    """Store `suite_result` (an ExpectationSuiteValidationResult) and render its Data Docs page
    under ``<lake>/_data_docs/``; returns the page's path (a URL for a non-local lake).

    Local lakes get GE's full site (validation pages, suite pages, index); on other filesystems the
    page is rendered alone and written through fsspec.
    """
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    with _lock:
        sid = ExpectationSuiteIdentifier(name=suite.name)
        key = ValidationResultIdentifier(
            expectation_suite_identifier=sid,
            run_id=RunIdentifier(run_name=run_name, run_time=run_time),
            batch_identifier=batch_identifier,
        )
        if not lake.is_local:
            return _render_single(lake, suite_result, key)
        site, vstore, estore = _site(lake)
        vstore.set(key, suite_result)
        rendered = _state.setdefault("suite_pages", set())
        page = (
            lake.path(DOCS_DIR),
            suite.name,
            hashlib.sha1(json.dumps(suite.to_json_dict(), sort_keys=True, default=str).encode()).hexdigest(),
        )
        resources = [key]
        if page not in rendered:  # the suite's own page: once per process, or when it changed
            estore.set(sid, suite)
            resources.append(sid)
        site.build(resource_identifiers=resources, build_index=build_index)
        rendered.add(page)
        url = site.get_resource_url(key, only_if_exists=False)
        return urllib.parse.unquote(urllib.parse.urlparse(url).path)


def index_path(lake) -> str:
    """Path of the Data Docs index page of a lake."""
    return lake.path(DOCS_DIR, "index.html")


def _site(lake):
    root = lake.path(DOCS_DIR)
    if root in _state:
        return _state[root]
    from great_expectations.render.renderer.site_builder import SiteBuilder

    ctx = context()
    tag = hashlib.sha1(root.encode()).hexdigest()[:12]
    backend = {"class_name": "TupleFilesystemStoreBackend"}
    vname, ename = f"lockstep_validations_{tag}", f"lockstep_suites_{tag}"
    vstore = ctx.add_store(
        vname,
        {
            "class_name": "ValidationResultsStore",
            "store_backend": {**backend, "base_directory": f"{root}/_store/validations"},
        },
    )
    estore = ctx.add_store(
        ename,
        {
            "class_name": "ExpectationsStore",
            "store_backend": {**backend, "base_directory": f"{root}/_store/expectations"},
        },
    )
    site = SiteBuilder(
        data_context=ctx,
        site_name="lockstep",
        show_how_to_buttons=False,
        store_backend={**backend, "base_directory": root},
        site_section_builders={
            "expectations": {
                "class_name": "DefaultSiteSectionBuilder",
                "source_store_name": ename,
                "renderer": {"class_name": "ExpectationSuitePageRenderer"},
            },
            "validations": {
                "class_name": "DefaultSiteSectionBuilder",
                "source_store_name": vname,
                "renderer": {"class_name": "ValidationResultsPageRenderer"},
            },
            "profiling": "0",
        },
        site_index_builder={
            "class_name": "DefaultSiteIndexBuilder",
            "show_cta_footer": False,
            "validation_results_limit": INDEX_LIMIT,
        },
    )
    _state[root] = (site, vstore, estore)
    return _state[root]


def _render_single(lake, suite_result, key) -> str:
    from great_expectations.render.renderer import ValidationResultsPageRenderer
    from great_expectations.render.view import DefaultJinjaPageView

    html = DefaultJinjaPageView().render(ValidationResultsPageRenderer().render(suite_result))
    parts = ["validations", *key.to_tuple()[:-1], f"{key.to_tuple()[-1]}.html"]
    path = lake.path(DOCS_DIR, *[p.replace("/", "_") for p in parts])
    lake.fs.pipe_file(path, html.encode())
    return path
