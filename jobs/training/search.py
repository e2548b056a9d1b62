"""Hyperparameter search for the LightGBM model: successive halving over a ``distributed`` cluster.

The search (``search``) runs on a stratified, seeded subsample of the *training* range and
scores every candidate on the out-of-time *validation* range; the holdback range is never
resolved, let alone read (``tune`` only looks up the train and valid partitions). Schedule
(successive halving, Jamieson & Talwalkar 2016):

* ``n_candidates`` configurations: candidate 0 is the job's defaults (``DEFAULT_PARAMS``), the
  others are drawn from ``SPACE`` with scikit-learn's ``ParameterSampler`` seeded by ``seed``;
* rung ``k`` trains the survivors on the first ``r_k`` rows of one stratified row order
  (every prefix keeps the label rate), ``r_k = max_rows / eta**(K-1-k)`` with ``r_0 >= min_rows``,
  and keeps the best ``ceil(n_k / eta)`` by validation AUC (ties: lower candidate id);
* the incumbent guard (``keep_defaults``, on by default): candidate 0 (the defaults) is carried
  into every rung even when halving would drop it, so the final rung always compares the winner
  with the defaults on the same rows and the search never returns a configuration that scores
  below the defaults there. Without it, halving on small rungs can and does drop defaults that
  are better at full size (tests/jobs/test_tune.py shows it on CDNOW);
* ``min_data_in_leaf`` is scaled to the rung's rows (``scale_leaf_size``): a leaf size is read as
  a share of the full subsample, so small rungs do not favour very large leaves;
* scoring: every rung but the last scores on a stratified prefix of the validation rows as long
  as its training rows (at least ``min_valid_rows``), the last rung on all of them; the AUC is
  checked every ``eval_every`` rounds (evaluating every round cost more than training on small
  rungs: ~17 of 24 ms per round at 15k training / 67k validation rows, measured);
* every fit is a pure task (``client.submit``) with ``num_threads=1``, ``deterministic=True`` and
  a fixed seed, so the candidates of a rung run in parallel on the cluster's workers and a run
  is identical to another with the same seed (only the timings differ); each fit early-stops
  on the validation AUC (``patience``) within ``num_boost_round``.

Budgets: ``n_candidates`` (configurations), ``max_seconds`` (wall clock: no rung starts after
it, and a rung in progress is cut — its unfinished fits cancelled — the best then comes from
what finished), and the cost of each fit is recorded as ``rows x rounds`` ("budget").

``tune_and_train`` then trains the best configuration on the full training range with the
streamed trainer (``jobs.training.trainer.train_model``), which scores the holdback once and registers a
challenger; the search table and the number of configurations tried against the validation
range go into its reports and into ``<lake>/_reports/tuning/<model>/<run id>/``.
"""

from __future__ import annotations

import io
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

log = logging.getLogger(__name__)

#: The searched parameters and their defaults (candidate 0); the defaults are ``DEFAULT_PARAMS``'
#: values where it sets them and LightGBM's otherwise (no bagging, no regularisation).
TUNED_DEFAULTS: dict = {
    "num_leaves": 31,
    "min_data_in_leaf": 100,
    "learning_rate": 0.05,
    "feature_fraction": 0.9,
    "bagging_fraction": 1.0,
    "bagging_freq": 0,
    "lambda_l1": 0.0,
    "lambda_l2": 0.0,
}


def search_space() -> dict:
    """scipy distributions / lists for ``sklearn.model_selection.ParameterSampler``."""
    from scipy.stats import loguniform, randint, uniform

    return {
        "num_leaves": randint(4, 128),
        "min_data_in_leaf": randint(5, 400),
        "learning_rate": loguniform(0.02, 0.3),
        "feature_fraction": uniform(0.4, 0.6),
        "bagging_fraction": uniform(0.5, 0.5),
        "bagging_freq": [0, 1, 5],
        "lambda_l1": [0.0, 0.0, 1e-3, 1e-2, 0.1, 1.0, 10.0],
        "lambda_l2": [0.0, 0.0, 1e-3, 1e-2, 0.1, 1.0, 10.0],
    }


def sample_candidates(n: int, seed: int) -> list[dict]:
    """Candidate 0 = ``TUNED_DEFAULTS``, then ``n - 1`` draws (rounded to 4 significant digits)."""
    from sklearn.model_selection import ParameterSampler

    if n < 1:
        raise ValueError(f"n_candidates must be >= 1, got {n}")
    out = [dict(TUNED_DEFAULTS)]
    if n > 1:
        for p in ParameterSampler(search_space(), n_iter=n - 1, random_state=seed):
            out.append({k: _clean(p[k]) for k in TUNED_DEFAULTS})
    return out


def _clean(v):
    if isinstance(v, (int, np.integer)):
        return int(v)
    v = float(v)
    return 0.0 if v == 0 else float(f"{v:.4g}")


# ---- results ------------------------------------------------------------------------------------
@dataclass
class CandidateRecord:
    candidate: int
    rung: int
    rows: int
    params: dict
    status: str = "done"  # done | cancelled
    valid_auc: float = float("nan")
    best_iteration: int = 0
    rounds: int = 0  # boosting rounds trained (best + patience, or the cap)
    budget: int = 0  # rows x rounds
    seconds: float = 0.0
    worker: str = ""
    valid_rows: int = 0  # validation rows it was scored on


@dataclass
class TuneResult:
    records: list[CandidateRecord]
    best_id: int
    best_params: dict
    best_auc: float
    best_rows: int
    n_configs: int  # distinct configurations scored on the validation range
    n_fits: int  # fits scored on the validation range
    rungs: list[dict]  # per rung: rows, candidates, kept, seconds
    stopped_early: str | None  # why the schedule stopped before its last rung, if it did
    seconds: float
    seed: int
    settings: dict = field(default_factory=dict)
    train_rows: int = 0  # rows of the training range the subsample was drawn from
    valid_rows: int = 0

    def table(self):
        """Every fit as a DataFrame: candidate, rung, rows, params..., valid AUC, rounds, budget, seconds."""
        import pandas as pd

        rows = []
        for r in self.records:
            d = {k: v for k, v in asdict(r).items() if k != "params"}
            d.update(r.params)
            rows.append(d)
        return pd.DataFrame(rows)

    def summary(self) -> dict:
        return {
            "best_candidate": self.best_id,
            "best_params": self.best_params,
            "best_valid_auc": self.best_auc,
            "best_rows": self.best_rows,
            "configs_tried_on_validation": self.n_configs,
            "fits_scored_on_validation": self.n_fits,
            "rungs": self.rungs,
            "stopped_early": self.stopped_early,
            "seconds": self.seconds,
            "seed": self.seed,
            "settings": self.settings,
            "train_rows": self.train_rows,
            "valid_rows": self.valid_rows,
            "holdback_used": False,
        }


# ---- data ---------------------------------------------------------------------------------------
def stratified_order(y: np.ndarray, seed: int) -> np.ndarray:
    """A permutation of ``range(len(y))`` whose every prefix keeps each label's share.

    Rows of each class get evenly spaced ranks ``(i + u) / n_class`` (``u`` uniform, ``i`` a
    random position), and the rows are sorted by rank (ties by index): the first ``r`` rows
    then hold ``round(r * share)`` of each class, give or take one.
    """
    rng = np.random.default_rng(seed)
    rank = np.empty(len(y))
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        pos = rng.permutation(len(idx))
        rank[idx] = (pos + rng.random(len(idx))) / len(idx)
    return np.lexsort((np.arange(len(y)), rank))


def load_subsample(
    files: Sequence[str], features: Sequence[str], label: str, rows: int, seed: int, storage_options: dict | None = None
) -> tuple[np.ndarray, np.ndarray, int]:
    """``(X, y, total rows)``: ``rows`` rows of ``files`` (all if fewer) in stratified order.

    The labels are read first; only the chosen rows' features are kept while the files are
    streamed, so memory is bounded by the subsample.
    """
    from jobs.training.sequence import iter_matrices, read_column

    y_all = read_column(files, label, storage_options=storage_options)
    n = len(y_all)
    if n == 0:
        raise ValueError("the training range has no rows")
    if len(np.unique(y_all)) < 2:
        raise ValueError(f"all {n} training labels are {int(y_all[0])}: nothing to tune on")
    order = stratified_order(y_all, seed)[: min(rows, n)]
    # Read in file order, then put the rows in the stratified order.
    chosen = np.sort(order)
    x = np.empty((len(chosen), len(features)), dtype=np.float64)
    pos, start = 0, 0
    for m, _ in iter_matrices(files, features, storage_options=storage_options):
        end = start + len(m)
        lo, hi = np.searchsorted(chosen, [start, end])
        x[pos : pos + hi - lo] = m[chosen[lo:hi] - start]
        pos += hi - lo
        start = end
    where = np.searchsorted(chosen, order)  # position of each ordered row in x
    return np.ascontiguousarray(x[where]), y_all[order], n


def load_all(files, features, label, storage_options=None) -> tuple[np.ndarray, np.ndarray]:
    from jobs.training.sequence import load_matrix, read_column

    y = read_column(files, label, storage_options=storage_options)
    if len(y) == 0:
        raise ValueError("the validation range has no rows")
    if len(np.unique(y)) < 2:
        raise ValueError(f"all {len(y)} validation labels are {int(y[0])}: AUC is undefined")
    return np.ascontiguousarray(load_matrix(files, features, storage_options)), y


# ---- one fit (runs on a worker) -----------------------------------------------------------------
def fit_candidate(
    x,
    y,
    xv,
    yv,
    rows: int,
    params: dict,
    num_boost_round: int,
    patience: int,
    full_rows: int | None = None,
    valid_rows: int | None = None,
    eval_every: int = 10,
) -> dict:
    """Train ``params`` on the first ``rows`` rows, early-stopping on the validation AUC; a pure function.

    The validation AUC is computed every ``eval_every`` rounds (the new trees' raw scores added
    to a running sum) on the first ``valid_rows`` validation rows (all by default; the rows come
    in stratified order); training stops ``patience`` rounds after the best checkpoint, and the
    best checkpoint's AUC and iteration are returned. Evaluating every round would cost more
    than training on a small rung (the validation range is often larger than the rung's rows).

    With ``full_rows``, ``min_data_in_leaf`` is read as a leaf size at ``full_rows`` rows and scaled
    to ``rows`` (the same share of the data), so a small rung does not favour leaf sizes that are a
    large part of its sample.
    """
    import os
    import socket

    import lightgbm as lgb

    from jobs.training import metrics
    from jobs.training.lgbm import resolve_params

    t0 = time.perf_counter()
    p = resolve_params({**params, "num_threads": 1, "deterministic": True, "force_row_wise": True, "verbosity": -1})
    p["metric"] = "None"
    p["bin_construct_sample_cnt"] = min(int(p.get("bin_construct_sample_cnt", 200_000)), rows)
    if full_rows and rows < full_rows:
        p["min_data_in_leaf"] = max(1, round(p["min_data_in_leaf"] * rows / full_rows))
    nv = len(yv) if valid_rows is None else min(int(valid_rows), len(yv))
    xv, yv = xv[:nv], yv[:nv]
    train = lgb.Dataset(x[:rows], label=y[:rows], params=p, free_raw_data=True)
    booster = lgb.Booster(params=p, train_set=train)
    raw = np.zeros(nv)
    best_auc, best_it, it, history = -np.inf, 0, 0, []
    while it < num_boost_round:
        step = min(eval_every, num_boost_round - it)
        for _ in range(step):
            if booster.update():  # no more splits possible
                break
        done = booster.current_iteration()
        if done == it:
            break
        raw += booster.predict(xv, start_iteration=it, num_iteration=done - it, raw_score=True)
        it = done
        auc = metrics.auc(yv, raw)
        history.append((it, auc))
        if auc > best_auc:
            best_auc, best_it = auc, it
        elif it - best_it >= patience:
            break
        if done % eval_every:  # stopped early inside the step
            break
    return {
        "valid_auc": float(best_auc),
        "best_iteration": int(best_it),
        "rounds": int(it),
        "valid_rows": int(nv),
        "seconds": time.perf_counter() - t0,
        "worker": f"{socket.gethostname()}:{os.getpid()}",
    }


# ---- the search ---------------------------------------------------------------------------------
def rung_sizes(min_rows: int, max_rows: int, eta: int) -> list[int]:
    """``[r_0, ..., r_{K-1} = max_rows]``, each ``eta`` times the previous one, ``r_0 >= min_rows``."""
    if eta < 2:
        raise ValueError(f"eta must be >= 2, got {eta}")
    if min_rows < 1 or max_rows < min_rows:
        raise ValueError(f"need 1 <= min_rows <= max_rows, got {min_rows}, {max_rows}")
    k = math.floor(math.log(max_rows / min_rows, eta) + 1e-9)
    return [round(max_rows / eta ** (k - i)) for i in range(k + 1)]


def search(
    client,
    train_files: Sequence[str],
    valid_files: Sequence[str],
    features: Sequence[str],
    label: str,
    *,
    n_candidates: int = 27,
    eta: int = 3,
    min_rows: int = 10_000,
    max_rows: int = 300_000,
    max_seconds: float = 3600.0,
    seed: int = 0,
    num_boost_round: int = 300,
    patience: int = 30,
    scale_leaf_size: bool = True,
    keep_defaults: bool = True,
    min_valid_rows: int = 20_000,
    eval_every: int = 10,
    base_params: dict | None = None,
    storage_options: dict | None = None,
    progress: Callable[[str], None] | None = None,
) -> TuneResult:
    """Successive halving on ``client``'s cluster; see the module docstring."""
    from distributed import as_completed

    if n_candidates < 1:
        raise ValueError(f"n_candidates must be >= 1, got {n_candidates}")
    if not train_files:
        raise ValueError("no training files to tune on")
    if not valid_files:
        raise ValueError("no validation files to score candidates on")
    say = progress or (lambda msg: None)
    t0 = time.perf_counter()
    deadline = t0 + max_seconds
    x, y, total = load_subsample(train_files, features, label, max_rows, seed, storage_options)
    xv, yv = load_all(valid_files, features, label, storage_options)
    vorder = stratified_order(yv, seed)  # prefixes keep the label rate: small rungs score on a prefix
    xv, yv = np.ascontiguousarray(xv[vorder]), yv[vorder]
    max_rows = len(y)
    sizes = rung_sizes(min(min_rows, max_rows), max_rows, eta)
    # the last rung scores on the whole validation range; earlier ones on as many rows as they train
    # on (at least min_valid_rows)
    valid_sizes = [min(len(yv), max(r, min_valid_rows)) for r in sizes[:-1]] + [len(yv)]
    candidates = sample_candidates(n_candidates, seed)
    base = {k: v for k, v in (base_params or {}).items() if k not in TUNED_DEFAULTS}
    base.setdefault("seed", seed)
    _msg(
        say,
        f"tune: {len(candidates)} candidates, eta {eta}, rungs of {sizes} training rows (subsample of "
        f"{total:,}) scored on {valid_sizes} validation rows (of {len(yv):,}), budget {max_seconds:.0f}s, "
        f"seed {seed}",
    )
    data = client.scatter([x, y, xv, yv], broadcast=True)
    del x, xv

    try:
        records: list[CandidateRecord] = []
        alive = list(range(len(candidates)))
        rungs: list[dict] = []
        stopped = None
        final_rung: list[CandidateRecord] = []
        for k, rows in enumerate(sizes):
            if k > 0 and time.perf_counter() >= deadline:
                stopped = (
                    f"time budget of {max_seconds:g}s reached after rung {k - 1}: rungs {k}..{len(sizes) - 1} not run"
                )
                break
            rt = time.perf_counter()
            futures = {}
            for cid in alive:
                params = {**base, **candidates[cid]}
                fut = client.submit(
                    fit_candidate,
                    *data,
                    rows,
                    params,
                    num_boost_round,
                    patience,
                    max_rows if scale_leaf_size else None,
                    valid_sizes[k],
                    eval_every,
                    pure=False,
                    key=f"tune-s{seed}-r{k}-c{cid}-{time.time_ns()}",
                )
                futures[fut] = cid
            done: dict[int, dict] = {}
            cut = False
            ac = as_completed(futures, timeout=None)
            for fut in ac:
                cid = futures[fut]
                out = fut.result()
                done[cid] = out
                _msg(
                    say,
                    f"tune: rung {k + 1}/{len(sizes)} ({rows:,} rows) candidate {cid:3d}: valid AUC "
                    f"{out['valid_auc']:.5f} in {out['rounds']} rounds, {out['seconds']:.1f}s "
                    f"[{len(done)}/{len(futures)}]",
                )
                if k > 0 and time.perf_counter() >= deadline and len(done) < len(futures):
                    cut = True
                    for f, c in futures.items():
                        if c not in done:
                            f.cancel()
                    break
            rung_records = []
            for cid in alive:
                if cid in done:
                    o = done[cid]
                    rec = CandidateRecord(
                        cid,
                        k,
                        rows,
                        dict(candidates[cid]),
                        "done",
                        o["valid_auc"],
                        o["best_iteration"],
                        o["rounds"],
                        rows * o["rounds"],
                        round(o["seconds"], 3),
                        o["worker"],
                        o["valid_rows"],
                    )
                else:
                    rec = CandidateRecord(cid, k, rows, dict(candidates[cid]), "cancelled")
                records.append(rec)
                rung_records.append(rec)
            finished = sorted(
                (r for r in rung_records if r.status == "done"), key=lambda r: (-r.valid_auc, r.candidate)
            )
            # the schedule's n_{k+1} = ceil(n / eta^(k+1)), whatever the guard added
            keep = max(1, math.ceil(len(candidates) / eta ** (k + 1))) if k < len(sizes) - 1 else 1
            rungs.append(
                {
                    "rung": k,
                    "rows": rows,
                    "candidates": len(alive),
                    "finished": len(finished),
                    "kept": min(keep, len(finished)),
                    "seconds": round(time.perf_counter() - rt, 3),
                }
            )
            final_rung = finished
            _msg(
                say,
                f"tune: rung {k + 1}/{len(sizes)} done in {time.perf_counter() - rt:.1f}s: best candidate "
                f"{finished[0].candidate} (AUC {finished[0].valid_auc:.5f}); "
                + (f"keeping {min(keep, len(finished))}" if k < len(sizes) - 1 else "final"),
            )
            if cut:
                stopped = (
                    f"time budget of {max_seconds:g}s reached during rung {k}: {len(futures) - len(done)} "
                    "fit(s) cancelled, best taken from the finished ones"
                )
                break
            alive = sorted(r.candidate for r in finished[:keep])
            if keep_defaults and 0 not in alive and 0 in done:
                alive = [0, *alive]  # the incumbent guard: the defaults reach every rung
                rungs[-1]["defaults_carried"] = True
    finally:
        client.cancel(data)
    best = final_rung[0]
    done_records = [r for r in records if r.status == "done"]
    result = TuneResult(
        records=records,
        best_id=best.candidate,
        best_params=dict(candidates[best.candidate]),
        best_auc=best.valid_auc,
        best_rows=best.rows,
        n_configs=len({r.candidate for r in done_records}),
        n_fits=len(done_records),
        rungs=rungs,
        stopped_early=stopped,
        seconds=round(time.perf_counter() - t0, 3),
        seed=seed,
        settings={
            "n_candidates": n_candidates,
            "eta": eta,
            "min_rows": min_rows,
            "max_rows": max_rows,
            "rung_rows": sizes,
            "max_seconds": max_seconds,
            "num_boost_round": num_boost_round,
            "patience": patience,
            "scale_leaf_size": scale_leaf_size,
            "keep_defaults": keep_defaults,
            "valid_rows_per_rung": valid_sizes,
            "eval_every": eval_every,
            "base_params": base,
        },
        train_rows=total,
        valid_rows=len(yv),
    )
    _msg(
        say,
        f"tune: best candidate {best.candidate} {result.best_params} valid AUC {best.valid_auc:.5f} on "
        f"{best.rows:,} rows; {result.n_configs} configurations ({result.n_fits} fits) tried against the "
        f"validation range in {result.seconds:.1f}s" + (f"; stopped early: {stopped}" if stopped else ""),
    )
    return result


def _msg(say, text: str) -> None:
    log.info(text)
    say(text)


# ---- the job ------------------------------------------------------------------------------------
def tune(
    cfg,
    spec,
    *,
    n_candidates: int = 27,
    eta: int = 3,
    min_rows: int = 10_000,
    max_rows: int = 300_000,
    max_seconds: float = 3600.0,
    seed: int = 0,
    num_boost_round: int | None = None,
    patience: int | None = None,
    scale_leaf_size: bool = True,
    keep_defaults: bool = True,
    client=None,
    progress=None,
) -> TuneResult:
    """``search`` over ``spec``'s train range, scored on its valid range; the holdback is not touched."""
    from jobs.training.cluster import dask_client
    from jobs.training.labels import LABEL
    from jobs.training.spec import resolve_spec
    from jobs.training.training_set import ranges_files

    if n_candidates < 1:
        raise ValueError(f"n_candidates must be >= 1, got {n_candidates}")
    model, spec = resolve_spec(cfg, spec)
    lake = cfg.lake()
    _, _, files = ranges_files(lake, model, spec, roles=("train", "valid"))  # never the holdback
    for role, paths in files.items():
        if not paths:
            raise ValueError(f"the {role} range {getattr(spec, role)} has no training-set files")
    with dask_client(cfg, client) as c:
        return search(
            c,
            files["train"],
            files["valid"],
            list(model.feature_names),
            LABEL,
            n_candidates=n_candidates,
            eta=eta,
            min_rows=min_rows,
            max_rows=max_rows,
            max_seconds=max_seconds,
            seed=seed,
            num_boost_round=num_boost_round or min(spec.num_boost_round, 1000),
            patience=patience or spec.patience,
            scale_leaf_size=scale_leaf_size,
            keep_defaults=keep_defaults,
            base_params=spec.params,
            storage_options=cfg.storage_options or None,
            progress=progress,
        )


def write_report(result: TuneResult, directory: str, storage_options: dict | None = None) -> dict[str, str]:
    """``candidates.csv``, ``score_vs_budget.png``, ``summary.json`` and ``summary.md`` under ``directory``."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(directory, **(storage_options or {}))
    fs.makedirs(root, exist_ok=True)
    paths = {
        name: f"{directory.rstrip('/')}/{name}"
        for name in ("candidates.csv", "score_vs_budget.png", "summary.json", "summary.md")
    }
    table = result.table()
    with fsspec.open(paths["candidates.csv"], "w", **(storage_options or {})) as fh:
        table.to_csv(fh, index=False)
    with fsspec.open(paths["score_vs_budget.png"], "wb", **(storage_options or {})) as fh:
        fh.write(plot_png(result))
    with fsspec.open(paths["summary.json"], "w", **(storage_options or {})) as fh:
        json.dump(result.summary(), fh, indent=1, default=str)
    with fsspec.open(paths["summary.md"], "w", **(storage_options or {})) as fh:
        fh.write(summary_markdown(result))
    return paths


def plot_png(result: TuneResult) -> bytes:
    """Validation AUC vs cumulative budget (rows x rounds) per candidate, one line per candidate."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=100)
    ax = fig.add_subplot()
    by_cand: dict[int, list[CandidateRecord]] = {}
    for r in result.records:
        if r.status == "done":
            by_cand.setdefault(r.candidate, []).append(r)
    for cid, recs in sorted(by_cand.items()):
        spent = np.cumsum([r.budget for r in recs])
        auc = [r.valid_auc for r in recs]
        best = cid == result.best_id
        ax.plot(
            spent,
            auc,
            marker="o",
            ms=3,
            lw=2.0 if best else 0.8,
            alpha=1.0 if best else 0.5,
            color="C3" if best else ("C0" if cid else "C2"),
            label=f"candidate {cid} (best)" if best else ("defaults" if cid == 0 else None),
        )
    ax.set_xscale("log")
    ax.set_xlabel("cumulative budget per candidate (rows x boosting rounds)")
    ax.set_ylabel("validation AUC")
    ax.set_title(f"successive halving: {result.n_configs} configurations, {result.n_fits} fits")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def summary_markdown(result: TuneResult) -> str:
    lines = [
        f"# Hyperparameter search (seed {result.seed})",
        "",
        (
            f"* configurations tried against the validation range: **{result.n_configs}** "
            f"({result.n_fits} fits); the holdback range was not used by the search"
        ),
        f"* best: candidate {result.best_id}, validation AUC {result.best_auc:.5f} on {result.best_rows:,} rows",
        f"* best params: `{json.dumps(result.best_params, sort_keys=True)}`",
        f"* wall time {result.seconds:.1f}s"
        + (f"; stopped early: {result.stopped_early}" if result.stopped_early else ""),
        "",
        "| rung | rows | candidates | finished | kept | seconds |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['rung']} | {r['rows']:,} | {r['candidates']} | {r['finished']} | {r['kept']} | {r['seconds']:.1f} |"
        for r in result.rungs
    ]
    lines += [
        "",
        "| candidate | rung | rows | status | valid AUC | rounds | budget | seconds | params |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r.candidate} | {r.rung} | {r.rows:,} | {r.status} | {r.valid_auc:.5f} | {r.rounds} | {r.budget:,} | "
        f"{r.seconds:.2f} | `{json.dumps(r.params, sort_keys=True)}` |"
        for r in result.records
    ]
    return "\n".join(lines) + "\n"


def report_dir(cfg, model_name: str, seed: int) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return cfg.lake().path("_reports", "tuning", model_name, f"{stamp}-seed{seed}")


@dataclass
class TuneOutcome:
    tuning: TuneResult
    report: dict[str, str]
    train: object | None  # jobs.training.trainer.TrainOutcome, unless train=False


def tune_and_train(
    cfg, spec, registry=None, *, train: bool = True, client=None, progress=None, **search_kwargs
) -> TuneOutcome:
    """``tune``, write the report, then train the best configuration on the full training range
    (``spec.backend``, streamed by default), score the holdback once and register a challenger whose
    reports carry the search table and the number of configurations tried."""
    import dataclasses

    from jobs.training.cluster import dask_client
    from jobs.training.spec import resolve_spec

    _, spec = resolve_spec(cfg, spec)
    with dask_client(cfg, client) as c:
        result = tune(cfg, spec, client=c, progress=progress, **search_kwargs)
        paths = write_report(result, report_dir(cfg, spec.model_name, result.seed), cfg.storage_options or None)
        _msg(progress or (lambda m: None), f"tune: report in {paths['summary.md'].rsplit('/', 1)[0]}")
        if not train:
            return TuneOutcome(result, paths, None)
        final = dataclasses.replace(spec, params={**spec.params, **result.best_params, "seed": result.seed})
        outcome = _train_and_register(cfg, final, registry, c, result, paths)
    return TuneOutcome(result, paths, outcome)


def _train_and_register(cfg, spec, registry, client, result: TuneResult, paths: dict):
    """``train_model`` with the search recorded on the candidate (table, configurations tried)."""
    from jobs.training.trainer import train_model

    return train_model(
        cfg,
        spec,
        registry,
        client=client,
        extra_metrics={"valid_configs_tried": result.n_configs, "valid_fits_tried": result.n_fits},
        extra_reports={
            "tuning": {**result.summary(), "report": paths, "candidates": [asdict(r) for r in result.records]}
        },
    )


__all__ = [
    "TUNED_DEFAULTS",
    "CandidateRecord",
    "TuneOutcome",
    "TuneResult",
    "fit_candidate",
    "load_subsample",
    "rung_sizes",
    "sample_candidates",
    "search",
    "search_space",
    "stratified_order",
    "tune",
    "tune_and_train",
    "write_report",
]
