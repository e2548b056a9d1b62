"""Run configuration: the one object every job gets its paths and engine settings from."""

from __future__ import annotations

import dataclasses
import os
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from features.repo import Repo
from features.repo import load as load_repo
from jobs.lake import Lake

ENGINES = ("local", "dask", "spark")

# Environment variable -> (Config field, parser). Empty values count as unset.
_ENV: dict[str, tuple[str, type]] = {
    "LOCKSTEP_LAKE": ("lake_root", str),
    "LOCKSTEP_ENGINE": ("engine", str),
    "LOCKSTEP_DASK_ADDRESS": ("dask_address", str),
    "LOCKSTEP_SPARK_MASTER": ("spark_master", str),
    "LOCKSTEP_BUCKETS": ("buckets", int),
    "LOCKSTEP_DASK_MEMORY_LIMIT": ("dask_memory_limit", str),
    "LOCKSTEP_REPO": ("repo_package", str),
}

# argparse destination of a global ``lockstep`` flag -> Config field (``Config.from_args``).
_FLAGS: dict[str, str] = {
    "lake": "lake_root",
    "engine": "engine",
    "dask_address": "dask_address",
    "spark_master": "spark_master",
    "buckets": "buckets",
    "repo": "repo_package",
}

_SCRATCH_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Config:
    """Where the lake lives and which engine runs the jobs.

    `lake_root` is a local path or any fsspec URL; `storage_options` are passed to fsspec.
    """

    lake_root: str = ".lockstep/lake"
    # Excluded from hashing: a dict is unhashable, and a MappingProxy would not pickle to workers.
    storage_options: dict[str, Any] = field(default_factory=dict, hash=False)
    engine: str = "local"
    dask_address: str | None = None
    dask_workers: int = 2
    dask_threads_per_worker: int = 1
    dask_memory_limit: str = "4GiB"
    spark_master: str = "local[2]"
    buckets: int = 16
    verify_checksums: bool = True
    #: Readers recompute each partition's content fingerprint from its rows (``jobs.lake``): catches
    #: a file rewritten along with its manifest's size and sha256. Off, readers trust the checksums.
    verify_content: bool = True
    #: The declarations: a package name or a directory of modules (``features.repo.load``);
    #: None = ``features.projects``.
    repo_package: str | None = None

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"unknown engine {self.engine!r}; allowed engines are: {', '.join(ENGINES)}")
        for name in ("buckets", "dask_workers", "dask_threads_per_worker"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not str(self.lake_root):
            raise ValueError("lake_root must not be empty")
        object.__setattr__(self, "lake_root", str(self.lake_root))
        object.__setattr__(self, "storage_options", dict(self.storage_options or {}))

    @classmethod
    def from_env(cls, **overrides: Any) -> Config:
        """Build a Config from the LOCKSTEP_* environment variables, then `overrides`.

        Overrides whose value is None are ignored, so unset CLI flags fall through to the
        environment and the defaults.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"unknown Config field(s): {', '.join(unknown)}")
        values: dict[str, Any] = {}
        for var, (name, parse) in _ENV.items():
            raw = os.environ.get(var, "").strip()
            if not raw:
                continue
            try:
                values[name] = parse(raw)
            except ValueError:
                raise ValueError(f"{var}={raw!r} is not a valid {parse.__name__}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @classmethod
    def from_args(cls, args: Any) -> Config:
        """The Config of a ``lockstep`` command: its ``--lake``, ``--engine``, ``--dask-address``,
        ``--spark-master`` and ``--buckets`` flags over the LOCKSTEP_* environment (``from_env``).

        Flags the parser does not define, or leaves unset, fall through to the environment.
        """
        return cls.from_env(**{name: getattr(args, flag, None) for flag, name in _FLAGS.items()})

    def repo(self) -> Repo:
        """The checked repo of declarations (sources, feature sets, models) this run works on."""
        return load_repo(self.repo_package)

    def lake(self) -> Lake:
        """The lake at `lake_root` (signed with the lake key of ``LOCKSTEP_LAKE_KEY`` or
        ``LOCKSTEP_LAKE_KEY_FILE`` when one is set, see ``jobs.lake.lake_key_from_env``)."""
        return Lake(
            self.lake_root,
            self.storage_options,
            verify_checksums=self.verify_checksums,
            verify_content=self.verify_content,
        )

    def scratch(self, name: str) -> str:
        """Create and return a fresh, unique scratch directory `<lake_root>/_scratch/<name>-<uuid>`.

        Returned as a URL (a plain absolute path for a local lake).
        """
        if not _SCRATCH_NAME.match(name):
            raise ValueError(f"bad scratch name {name!r}: use letters, digits, '_', '.', '-'")
        lake = self.lake()
        url = lake.path("_scratch", f"{name}-{uuid.uuid4().hex}")
        lake.fs.makedirs(url, exist_ok=True)
        return url
