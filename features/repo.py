"""The repository of declarations: every source, feature set and model, checked when loaded.

Declarations live in modules under a package (``features.projects`` by default, or the
package / directory named by ``LOCKSTEP_REPO``), one declaration per module, as Feast's feature
repo and Chronon's ``group_bys/<team>/<name>.py``. :func:`load` imports every module of the
package, collects the module-level :class:`Source`, :class:`FeatureSet` and :class:`Model`
objects and runs :func:`check`: an unknown column, a key-type mismatch, a feature name used by
two joined sets, a label horizon longer than the data, two declarations of one name — each a
:class:`DeclarationError` naming the declaration and the field.
"""

from __future__ import annotations

import datetime as dt
import importlib
import importlib.util
import os
import pkgutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from features.model import Condition, EntitySnapshots, EventLabel, Model, OutcomeLabel
from features.source import TIMESTAMP, DeclarationError, Source
from features.spec import FeatureSet

DEFAULT_PACKAGE = "features.projects"
REPO_ENV = "LOCKSTEP_REPO"


@dataclass
class Repo:
    """Declarations by name, and where each was declared."""

    sources: dict[str, Source] = field(default_factory=dict)
    feature_sets: dict[str, FeatureSet] = field(default_factory=dict)
    models: dict[str, Model] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)
    #: the model a job works on when none is named (``default_model``), if the repo names one
    default: str | None = None

    @classmethod
    def of(cls, *declarations, origin: str = "<code>") -> Repo:
        """A repo of the given declarations plus everything they reference, checked."""
        repo = cls()
        for d in declarations:
            repo.add(d, origin)
        repo.add_referenced()
        check(repo)
        return repo

    def add(self, d, origin: str) -> None:
        kind, book = _book(self, d)
        other = book.get(d.name)
        if other is not None and other != d:
            raise DeclarationError(
                kind, d.name, "name", f"declared twice ({self.origins[f'{kind}:{d.name}']} and {origin})"
            )
        book[d.name] = d
        self.origins.setdefault(f"{kind}:{d.name}", origin)

    def add_referenced(self) -> None:
        """Sources and feature sets that models and sets reference but no module declares at top level."""
        for m in list(self.models.values()):
            for d in (*m.feature_sets, *m.sources):
                self.add(d, self.origins[f"model:{m.name}"])
        for fs in list(self.feature_sets.values()):
            if fs.source is not None:
                self.add(fs.source, self.origins[f"feature set:{fs.name}"])

    def source(self, name: str) -> Source:
        return _get(self.sources, "source", name)

    def feature_set(self, name: str) -> FeatureSet:
        return _get(self.feature_sets, "feature set", name)

    def model(self, name: str) -> Model:
        return _get(self.models, "model", name)

    def feature_sets_of(self, source: Source) -> list[FeatureSet]:
        return [fs for fs in self.feature_sets.values() if fs.source is not None and fs.source.name == source.name]

    def models_of(self, fs: FeatureSet) -> list[Model]:
        return [m for m in self.models.values() if fs.name in [f.name for f in m.feature_sets]]

    def known_fingerprints(self) -> dict[str, str]:
        return {fs.fingerprint: name for name, fs in self.feature_sets.items()}

    def default_model(self) -> Model:
        """The model a job works on when none is named (the CLI without --model): the only one, or the
        repo's declared ``DEFAULT_MODEL`` (a module-level name in the repo package's ``__init__``)."""
        if not self.models:
            raise KeyError("the repo declares no model")
        if len(self.models) == 1:
            return next(iter(self.models.values()))
        if self.default is None:
            raise KeyError(
                f"the repo declares {len(self.models)} models {sorted(self.models)} and no DEFAULT_MODEL: name one (--model)"
            )
        return self.model(self.default)


def _book(repo: Repo, d) -> tuple[str, dict]:
    if isinstance(d, Source):
        return "source", repo.sources
    if isinstance(d, FeatureSet):
        return "feature set", repo.feature_sets
    if isinstance(d, Model):
        return "model", repo.models
    raise TypeError(f"not a declaration: {type(d).__name__}")


def _get(book: dict, kind: str, name: str):
    try:
        return book[name]
    except KeyError:
        raise KeyError(f"unknown {kind} {name!r}; known: {sorted(book)}") from None


# ---------------------------------------------------------------------------- loading

_CACHE: dict[str, Repo] = {}


def load(package: str | None = None) -> Repo:
    """The checked repo of ``package`` (default ``$LOCKSTEP_REPO`` or ``features.projects``).

    ``package`` is a dotted package name or a directory of declaration modules. Cached.
    """
    package = package or os.environ.get(REPO_ENV, "").strip() or DEFAULT_PACKAGE
    if package not in _CACHE:
        repo = Repo()
        modules = list(_modules(package))
        # a declaration's origin is the module assigning it, not one importing it: those first
        for own in (True, False):
            for origin, module in modules:
                assigned = _assigned_names(module)
                for name, value in vars(module).items():
                    if isinstance(value, (Source, FeatureSet, Model)) and (name in assigned) == own:
                        repo.add(value, origin)
        repo.add_referenced()
        repo.default = next((getattr(mod, "DEFAULT_MODEL", None) for _, mod in modules[:1]), None)
        check(repo)
        _CACHE[package] = repo
    return _CACHE[package]


def _assigned_names(module: ModuleType) -> set[str]:
    """Names a module assigns at top level (not the ones it imports)."""
    import ast

    file = getattr(module, "__file__", None)
    if not file or not file.endswith(".py"):
        return set()
    # Through the module's loader, not the file system: the engines ship this package as a zip.
    source = module.__loader__.get_source(module.__name__)
    if source is None:
        return set()
    out: set[str] = set()
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign):
            targets = node.targets
        else:
            targets = [node.target] if isinstance(node, ast.AnnAssign) else []
        out |= {t.id for t in targets if isinstance(t, ast.Name)}
    return out


def _modules(package: str):
    path = Path(package)
    if path.is_dir():
        for f in sorted(path.rglob("*.py")):
            if f.name.startswith("_"):
                continue
            name = "lockstep_repo." + ".".join(f.relative_to(path).with_suffix("").parts)
            spec = importlib.util.spec_from_file_location(name, f)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
            yield str(f), module
        return
    root: ModuleType = importlib.import_module(package)
    yield root.__name__, root
    for info in sorted(pkgutil.walk_packages(root.__path__, root.__name__ + "."), key=lambda i: i.name):
        if info.name.rsplit(".", 1)[-1].startswith("_"):
            continue
        yield info.name, importlib.import_module(info.name)


# ---------------------------------------------------------------------------- checks


def check(repo: Repo) -> None:
    """Cross-declaration checks; raises the first :class:`DeclarationError` found."""
    if repo.default is not None and repo.default not in repo.models:
        raise DeclarationError(
            "repo", "DEFAULT_MODEL", "DEFAULT_MODEL", f"names no declared model ({sorted(repo.models)})"
        )
    for fs in repo.feature_sets.values():
        if fs.source is not None and repo.sources.get(fs.source.name) not in (None, fs.source):
            raise DeclarationError(
                "feature set", fs.name, "source", f"uses a source {fs.source.name!r} that differs from the declared one"
            )
    for m in repo.models.values():
        _check_model(m, repo)


def _check_model(m: Model, repo: Repo) -> None:
    def bad(field_: str, problem: str) -> DeclarationError:
        return DeclarationError("model", m.name, field_, problem)

    q = m.queries.source
    columns = {n: t for n, t, _ in q.raw_columns()}
    if isinstance(m.queries, EntitySnapshots):
        if m.queries.key_name not in q.key_names:
            raise bad("queries.key", f"{m.queries.key_name!r} is not a key of source {q.name!r} ({list(q.key_names)})")
        if m.queries.every not in ("day", "week"):
            raise bad("queries.every", f"{m.queries.every!r}; expected 'day' or 'week'")
        columns = {m.queries.key_name: q.type_of(m.queries.key_name)}
    else:
        if m.queries.lead_days < 0:
            raise bad("queries.lead_days", f"must be >= 0, got {m.queries.lead_days!r}")
        if m.queries.time not in q.raw_column_names:
            raise bad("queries.time", f"unknown column {m.queries.time!r} of query source {q.name!r}")
        if q.type_of(m.queries.time) != TIMESTAMP:
            raise bad("queries.time", f"{m.queries.time!r} is {q.type_of(m.queries.time)}, not a timestamp")
    seen: dict[str, str] = {}
    for i, j in enumerate(m.joins):
        fs = j.feature_set
        where = f"joins[{i}]"
        if fs.source is None:
            raise bad(where, f"feature set {fs.name!r} declares no source")
        declared = repo.feature_sets.get(fs.name)
        if declared is not None and declared != fs:
            raise bad(where, f"joins a feature set {fs.name!r} that differs from the declared one")
        if j.key_name not in columns:
            raise bad(f"{where}.key", f"unknown column {j.key_name!r}: the queries have {sorted(columns)}")
        if columns[j.key_name] != fs.entity_type:
            raise bad(
                f"{where}.key",
                f"key-type mismatch: query column {j.key_name!r} is {columns[j.key_name]}, "
                f"feature set {fs.name!r} is keyed by {fs.entity} ({fs.entity_type})",
            )
        for name in fs.feature_names:
            if name in seen:
                raise bad(where, f"feature name {name!r} is used by two joined sets: {seen[name]!r} and {fs.name!r}")
            seen[name] = fs.name
    reserved = {c for c, _ in m.id_columns} | {"as_of", "label"}
    clash = sorted(reserved & set(seen))
    if clash:
        raise bad("joins", f"feature names {clash} clash with the model's key or label columns")
    label = m.label
    if isinstance(label, EventLabel):
        _check_conditions(bad, "label.where", label.where, label.source)
        if not label.horizon_days > 0:
            raise bad("label.horizon_days", f"must be > 0, got {label.horizon_days!r}")
        if label.source.span is not None:
            first, last = (dt.date.fromisoformat(d) for d in label.source.span)
            days = (last - first).days + 1
            if label.horizon_days + label.grace_days >= days:
                raise bad(
                    "label.horizon_days",
                    f"a {label.horizon_days:g}-day horizon (+{label.grace_days} grace) is "
                    f"longer than the data of source {label.source.name!r} "
                    f"({label.source.span[0]}..{label.source.span[1]}, {days} days)",
                )
        if label.source.name != q.name and m.queries.key_name not in label.source.key_names:
            raise bad("label.source", f"source {label.source.name!r} has no key {m.queries.key_name!r}")
    else:
        assert isinstance(label, OutcomeLabel)
        if not label.when:
            raise bad("label.when", "an outcome label needs at least one condition")
        outcomes = label.source or q
        if outcomes.event_id != q.event_id or outcomes.event_id_type != q.event_id_type:
            raise bad(
                "label.source",
                f"outcome source {outcomes.name!r} has event id {outcomes.event_id!r} "
                f"({outcomes.event_id_type}); the queries' is {q.event_id!r} ({q.event_id_type})",
            )
        _check_conditions(bad, "label.when", label.when, outcomes)
    spans = {s.name: s.span for s in m.sources}
    for role in ("train", "valid", "holdback"):
        rng = getattr(m.ranges, role)
        span = m.label_source.span
        if rng is not None and span is not None and (rng[0] < span[0] or rng[1] > span[1]):
            raise bad(f"ranges.{role}", f"{rng[0]}..{rng[1]} is outside the data ({span[0]}..{span[1]})")
        if rng is None:
            continue
        for name, (_, last) in m.label_reads(rng[1]).items():
            if spans.get(name) is not None and last > spans[name][1]:
                raise bad(
                    f"ranges.{role}",
                    f"the labels of its last cut-off {rng[1]} read {name!r} through {last}, past its data "
                    f"(which ends {spans[name][1]}): they can never mature",
                )


def _check_conditions(bad, where: str, conditions: tuple[Condition, ...], source: Source) -> None:
    for i, c in enumerate(conditions):
        if c.column not in source.raw_column_names:
            raise bad(
                f"{where}[{i}]",
                f"unknown column {c.column!r} of source {source.name!r} (columns: {source.raw_column_names})",
            )
