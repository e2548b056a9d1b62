"""The results table, the target evaluation, and their Markdown/JSON files."""

from __future__ import annotations

import json
import os
import platform

from bench.check import label
from bench.variants import EXACT, LOCAL_NATIVE

GIB = 1024**3
HEADER = (
    "variant",
    "size",
    "run",
    "wall s",
    "startup s",
    "CPU s",
    "load",
    "peak RSS GiB (tree)",
    "largest proc GiB",
    "x kernel",
    "x fastest native",
    "check",
)


def _wall(r: dict) -> float | None:
    return r.get("wall_s") if r.get("ok") else None


def fastest_native(results: list[dict], size: str) -> dict | None:
    peers = [r for r in results if r["size"] == size and r["variant"] in LOCAL_NATIVE and _wall(r) is not None]
    return min(peers, key=_wall, default=None)


def _find(results, size, variant):
    return next((r for r in results if r["size"] == size and r["variant"] == variant), None)


def rows(results: list[dict]) -> list[tuple[str, ...]]:
    out = []
    for r in results:
        size = r["size"]
        kernel = _find(results, size, "kernel")
        native = fastest_native(results, size)
        w = _wall(r)
        if r.get("timed_out"):
            wall = f"timeout (>{r['timeout_s']:.0f})"
        elif w is None:
            wall = "FAILED"
        else:
            wall = f"{w:.1f}"
        kw = _wall(kernel) if kernel else None
        nw = _wall(native) if native else None
        out.append(
            (
                r["variant"],
                size,
                str(r.get("run", 1)),
                wall,
                f"{r['startup_s']:.1f}" if r.get("startup_s") is not None and r.get("ok") else "",
                f"{r['cpu_s']:.0f}" if r.get("cpu_s") is not None else "",
                f"{r['load_avg']:.1f}" if r.get("load_avg") is not None else "",
                f"{r.get('peak_tree_bytes', 0) / GIB:.2f}",
                f"{r.get('peak_one_bytes', 0) / GIB:.2f}",
                f"{w / kw:.2f}" if w and kw else "",
                f"{w / nw:.2f}" if w and nw else "",
                "reference"
                if r["variant"] == "kernel" and r.get("ok")
                else (label(r.get("check")) if r.get("ok") else (r.get("error") or "failed")[:60]),
            )
        )
    return out


def markdown_table(results: list[dict]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in rows(results)]
    return "\n".join(lines)


def text_table(results: list[dict]) -> str:
    table = [HEADER, *rows(results)]
    widths = [max(len(row[i]) for row in table) for i in range(len(HEADER))]

    def fmt(row):
        return "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()

    return "\n".join([fmt(HEADER), "  ".join("-" * w for w in widths), *map(fmt, table[1:])])


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _checked(r: dict) -> str:
    c = r.get("check") or {}
    return "" if c.get("status") in ("equal", "close") else f" [output {label(r.get('check'))}]"


def targets(results: list[dict]) -> list[str]:
    lines = []
    sizes = list(dict.fromkeys(r["size"] for r in results))
    for size in sizes:
        kernel = _find(results, size, "kernel")
        native = fastest_native(results, size)
        for name in ("dask", "dask_knobs"):
            d = _find(results, size, name)
            if d is None:
                continue
            if _wall(d) is None:
                lines.append(f"FAIL  [{size}] {name}: did not complete ({d.get('error')})")
                continue
            cfg = (d.get("info") or {}).get("config", "")
            if native is not None:
                ratio = _wall(native) / _wall(d)
                lines.append(
                    f"{_verdict(ratio >= 2)}  [{size}] {name} >= 2x faster than the fastest DuckDB/Polars "
                    f"variant ({native['variant']} {_wall(native):.1f}s): {_wall(d):.1f}s -> "
                    f"{ratio:.2f}x{_checked(d)}  ({cfg})"
                )
            if kernel is not None and _wall(kernel) is not None:
                ratio = _wall(d) / _wall(kernel)
                lines.append(
                    f"{_verdict(ratio <= 1.3)}  [{size}] {name} within 1.3x of the in-process kernel "
                    f"({_wall(kernel):.1f}s): {_wall(d):.1f}s -> {ratio:.2f}x{_checked(d)}"
                )
        sql = _find(results, size, "spark_sql")
        for name in ("spark", "spark_knobs"):
            s = _find(results, size, name)
            if s is None or sql is None:
                continue
            if _wall(s) is None:
                lines.append(f"FAIL  [{size}] {name}: did not complete ({s.get('error')})")
                continue
            if sql.get("timed_out"):
                ratio = sql["timeout_s"] / _wall(s)
                lines.append(
                    f"{_verdict(ratio >= 2)}  [{size}] {name} >= 2x faster than Spark SQL windows "
                    f"(timed out at {sql['timeout_s']:.0f}s): {_wall(s):.1f}s -> >= {ratio:.2f}x"
                    f"{_checked(s)}"
                )
            elif _wall(sql) is None:
                lines.append(f"n/a   [{size}] {name} vs Spark SQL windows: spark_sql failed ({sql.get('error')})")
            else:
                ratio = _wall(sql) / _wall(s)
                lines.append(
                    f"{_verdict(ratio >= 2)}  [{size}] {name} >= 2x faster than Spark SQL windows "
                    f"({_wall(sql):.1f}s): {_wall(s):.1f}s -> {ratio:.2f}x{_checked(s)}"
                )
    for r in results:
        if r["variant"] == "dask_2GiB":
            done = _wall(r) is not None
            detail = (
                f"{r['wall_s']:.1f}s, peak RSS {r['peak_tree_bytes'] / GIB:.2f} GiB tree, "
                f"{r['peak_one_bytes'] / GIB:.2f} GiB largest process; {_workers(r)}"
                if done
                else r.get("error", "failed")
            )
            lines.append(
                f"{_verdict(done)}  [{r['size']}] Dask with dask_memory_limit=2GiB completes: {detail}"
                f"{_checked(r) if done else ''}"
            )
    return lines


def _workers(r: dict) -> str:
    """Largest Dask worker (peak RSS of the worker processes) and the driver's."""
    procs = r.get("procs", [])
    workers = [p for p in procs if p["role"] in ("dask worker", "spawned python")]
    driver = max((p["peak_rss_bytes"] for p in procs if p["role"] == "variant"), default=0)
    largest = max((p["peak_rss_bytes"] for p in workers), default=0)
    return f"largest of {len(workers)} workers {largest / GIB:.2f} GiB, driver {driver / GIB:.2f} GiB"


def configurations(results: list[dict]) -> list[str]:
    seen = {}
    for r in results:
        cfg = (r.get("info") or {}).get("config")
        if cfg:
            seen.setdefault(r["variant"], cfg)
    return [f"- `{v}`: {c}" for v, c in seen.items()]


def write(out_dir: str, stem: str, results: list[dict], meta: dict) -> tuple[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    md_path, json_path = os.path.join(out_dir, f"{stem}.md"), os.path.join(out_dir, f"{stem}.json")
    lines = [
        "# Point-in-time build benchmark (bench_pit_v1)",
        "",
        f"Machine: {meta['cpus']} CPUs, {meta['mem_gib']:.0f} GiB RAM, {platform.platform()}.",
        "",
        *[
            f"- run {i}: `{inv['command']}`, started {inv['started']}, took {inv['elapsed_s']:.0f}s"
            for i, inv in enumerate(meta.get("invocations") or [meta], 1)
        ],
        "",
        (
            "Wall = reading the input Parquet to writing the result Parquet (cluster/session start excluded, "
            "shown as startup). CPU s = user+system seconds of the whole process tree (startup included); "
            "load = mean 1-minute load average of the machine during the run (above the core count, others' work "
            "inflated the wall times). Peak RSS: the largest sum over the variant's process tree, sampled every 0.1 s, "
            "and the largest single process (its VmHWM, the kernel-tracked peak). x kernel / x fastest native = wall / that variant's wall (< 1 is faster). "
            "Check against the kernel's output: dask/spark bit for bit, native peers rtol=atol=1e-9."
        ),
        "",
        markdown_table(results),
        "",
        "## Targets",
        "",
        *[f"- {t}" for t in targets(results)],
        "",
        "## Configurations",
        "",
        *configurations(results),
        *[
            f"- kernel fingerprint `{fp}`: "
            + ", ".join(
                sorted(
                    {
                        f"{r['size']} {r['variant']}"
                        for r in results
                        if r.get("fingerprint") == fp and r["variant"] in EXACT
                    }
                )
            )
            for fp in sorted({r.get("fingerprint") for r in results if r.get("fingerprint") and r["variant"] in EXACT})
        ],
        "",
        "## Inputs",
        "",
        *[f"- {s}: {d}" for s, d in meta.get("inputs", {}).items()],
        "",
    ]
    with open(md_path, "w") as f:
        f.write("\n".join(lines))
    with open(json_path, "w") as f:
        json.dump({"meta": meta, "results": results, "targets": targets(results)}, f, indent=1, default=str)
    return md_path, json_path
