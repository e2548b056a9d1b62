"""The windows the workers of ONE service share, so that their canary guards and served-drift
verdicts judge the traffic of every worker, not each worker's own.

``uvicorn --workers N`` runs N processes, each with its own in-memory windows (``jobs.serving.guards``,
``jobs.serving.drift``): the request path appends to them and never waits for anything shared. At
every judgement the judging thread of each worker writes its window to ``<dir>/<kind>-<pid>.npz``
(numpy arrays, no pickle; written to a hidden temporary file, then renamed over: a reader sees the
old file or the new one, never a torn one) and reads every other worker's file of the same kind,
so the verdict is over the samples of all workers (a peer's as of its last judgement: at most one
judging interval old). A file not rewritten for ``stale_s`` (a worker that died; one replaced by
uvicorn) is not read; an unreadable one is skipped with a warning (its worker's samples are missing
from that verdict, the others are judged).

Decisions that must be taken ONCE for the service (stop a canary and record it on the registry,
alert a drifted feature) are claimed: :meth:`PeerDir.claim` creates ``<dir>/claim-<name>.json``
with ``O_EXCL``, so exactly one worker wins it; the others act in their own process only (stop
serving the canary) and read the winner's evidence from the file.

The directory is per service run: ``lockstep serve --workers N`` uses ``<metrics-dir>/windows``
(the prometheus multiprocess directory it empties at start; :func:`clean_peer_dir` empties this one)
unless ``Settings.peers_dir`` names one. One process (no such directory): nothing is shared.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

_META = "__meta__"


def clean_peer_dir(path) -> Path:
    """Create ``path`` and delete what a previous run of the service left in it (window files and
    claims): call it before the workers start (``lockstep serve``)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for f in path.iterdir():
        if f.is_file() and (f.suffix in (".npz", ".json") or f.name.startswith(".")):
            f.unlink(missing_ok=True)
    return path


class PeerDir:
    """One worker's view of the shared directory (``ident``: this worker's name in it, its pid)."""

    def __init__(self, root, *, ident: str | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.ident = str(os.getpid()) if ident is None else str(ident)
        self.skipped = 0  # peer files that could not be read (their samples were not judged)

    def _path(self, kind: str) -> Path:
        return self.root / f"{kind}-{self.ident}.npz"

    def publish(self, kind: str, meta: dict, arrays: dict[str, np.ndarray]) -> None:
        """This worker's window of ``kind`` now (``meta``: JSON; ``arrays``: named numpy arrays)."""
        tmp = self.root / f".{kind}-{self.ident}.tmp.npz"
        header = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        with open(tmp, "wb") as f:
            np.savez(f, **{_META: header}, **arrays)
        os.replace(tmp, self._path(kind))

    def peers(self, kind: str, stale_s: float) -> list[tuple[dict, dict[str, np.ndarray]]]:
        """Every OTHER worker's window of ``kind`` rewritten within ``stale_s``: (meta, arrays)."""
        out, now, mine = [], time.time(), self._path(kind)
        for path in sorted(self.root.glob(f"{kind}-*.npz")):
            if path == mine:
                continue
            try:
                if now - path.stat().st_mtime > stale_s:
                    continue
                with np.load(path, allow_pickle=False) as z:
                    arrays = {k: z[k] for k in z.files}
                meta = json.loads(arrays.pop(_META).tobytes())
            except FileNotFoundError:  # its worker stopped (removed it) between the listing and the read
                continue
            except Exception as exc:  # noqa: BLE001 - one unreadable peer must not stop the judgement
                self.skipped += 1
                log.warning("peer window %s not read (its samples are not judged): %r", path.name, exc)
                continue
            out.append((meta, arrays))
        return out

    def claim(self, name: str, payload: dict) -> bool:
        """True for exactly one caller per ``name`` over the service (the file is created exclusively)."""
        path = self.root / f"claim-{name}.json"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump({**payload, "by": self.ident}, f)
        return True

    def claimed(self, name: str) -> dict | None:
        """The winner's payload of ``name`` (None: not claimed yet, or its file is still being written)."""
        try:
            return json.loads((self.root / f"claim-{name}.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def close(self) -> None:
        """Remove this worker's window files (at shutdown: the others stop reading them at once)."""
        for path in self.root.glob(f"*-{self.ident}.npz"):
            path.unlink(missing_ok=True)


def latest(parts: list[np.ndarray], window: int, columns: int) -> np.ndarray:
    """The last ``window`` rows of the row-stacked ``parts`` (each ``(n, columns)``, wall-clock time
    in the last column) by time; a single part keeps its order (it is appended in time order)."""
    parts = [p.reshape(-1, columns) for p in parts if len(p)]
    if not parts:
        return np.empty((0, columns), dtype=np.float64)
    if len(parts) == 1:
        return parts[0][-window:]
    a = np.concatenate(parts)
    return a[np.argsort(a[:, -1], kind="stable")][-window:]
