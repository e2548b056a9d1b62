"""API keys of the serving service: who may call ``/predict`` and ``/predict/batch``.

A key is ``lsk_`` + 43 URL-safe characters (256 random bits, ``secrets``). The service never
holds or writes a key, only its SHA-256 (a key is random and long, so a plain hash cannot be
brute-forced: no salt or slow hash needed), and compares a presented key's hash with every
stored one in constant time (``hmac.compare_digest``, all entries, no early exit).

Where hashes live (either or both; several keys, each with an id):

* a key file (``LOCKSTEP_SERVING_API_KEYS_FILE``): one ``<key id> sha256:<64 hex digits>`` per
  line, ``#`` starts a comment, blank lines are ignored. ``lockstep serve-keys add --file F``
  appends one (printing the key once); revoking a key is removing its line (``lockstep
  serve-keys revoke ID``, or any editor). The service re-reads the file when its size, mtime or
  inode changed, checked at most every ``api_keys_reload_s`` (default 2 s), so a revocation takes
  effect within that interval, in every worker. A file that cannot be read or parsed at start-up
  stops the start; later, a bad line is skipped (logged by line number, never by content) and a
  missing file means no keys from it: a revocation never fails open.
* the environment (``LOCKSTEP_SERVING_API_KEY_HASHES``): the same entries separated by commas or
  newlines (for secrets injected by an orchestrator); read once at start.

With neither configured the service is OPEN (see :attr:`KeyRing.configured`): the default for
local development, announced by a warning at start-up and by ``/health`` (``"auth": "open"``).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

KEY_PREFIX = "lsk_"
#: Longer presented keys are refused unhashed (a generated key is 47 characters).
MAX_KEY_CHARS = 256
_HASH = re.compile(r"sha256:([0-9a-f]{64})")
_KEY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
ENTRY_FORMAT = "'<key id> sha256:<64 lower-case hex digits>' (key id: letters, digits, . _ -; at most 64)"


@dataclass(frozen=True)
class KeyEntry:
    key_id: str
    digest: bytes  # sha256 of the key


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """The stored form of ``key``: ``sha256:<hex>``."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def parse_entries(text: str, where: str, strict: bool = True) -> list[KeyEntry]:
    """Key entries of a key file's text (or the environment's, lines or commas). ``strict``: a bad
    line raises ValueError naming ``where`` and the line number; else it is logged and skipped. A
    message never repeats a line's content: a key pasted by mistake must not reach a log."""
    out: list[KeyEntry] = []
    seen: set[str] = set()
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        problem = None
        if len(parts) != 2 or not _KEY_ID.fullmatch(parts[0]) or not _HASH.fullmatch(parts[1]):
            problem = f"{where}, line {n}: not {ENTRY_FORMAT}"
        elif parts[0] in seen:
            problem = f"{where}, line {n}: key id {parts[0]!r} is used twice"
        if problem is not None:
            if strict:
                raise ValueError(problem)
            log.error("API keys: %s; line skipped", problem)
            continue
        seen.add(parts[0])
        out.append(KeyEntry(parts[0], bytes.fromhex(_HASH.fullmatch(parts[1]).group(1))))
    return out


def read_key_file(path, strict: bool = True) -> list[KeyEntry]:
    return parse_entries(Path(path).read_text(), str(path), strict)


def add_key(path, key_id: str | None = None) -> tuple[str, str]:
    """Generate a key, append its hash to the key file ``path`` (created 0600), return (key id, key).
    The key itself is written nowhere: the caller shows it once."""
    path = Path(path)
    existing = read_key_file(path) if path.exists() else []
    key_id = key_id or time.strftime("key-%Y%m%dT%H%M%SZ", time.gmtime())
    if not _KEY_ID.fullmatch(key_id):
        raise ValueError(f"key id {key_id!r}: letters, digits, . _ - only, at most 64, starting with a letter or digit")
    if any(e.key_id == key_id for e in existing):
        raise ValueError(f"{path}: key id {key_id!r} exists already")
    key = new_key()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as f:
        if not existing and f.tell() == 0:
            f.write("# lockstep serving API keys: <key id> sha256:<hash of the key>; remove a line to revoke\n")
        f.write(f"{key_id} {hash_key(key)}  # added {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n")
    return key_id, key


def revoke_key(path, key_id: str) -> bool:
    """Remove ``key_id``'s line from the key file (atomic replace); whether it was there."""
    path = Path(path)
    lines = path.read_text().splitlines(keepends=True)
    keep = [ln for ln in lines if ln.split("#", 1)[0].split()[:1] != [key_id]]
    if len(keep) == len(lines):
        return False
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.writelines(keep)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return True


class KeyRing:
    """The keys a service accepts: its key file (reloaded on change) plus the environment's."""

    def __init__(self, path=None, env_entries: str | None = None, reload_s: float = 2.0, clock=time.monotonic):
        self.path = Path(path) if path else None
        self.reload_s, self._clock = reload_s, clock
        text = (env_entries or "").replace(",", "\n")
        self._env = parse_entries(text, "LOCKSTEP_SERVING_API_KEY_HASHES") if text.strip() else []
        self._file: list[KeyEntry] = []
        self._sig = None
        self._checked = clock()
        self.reloads = 0
        if self.path is not None:
            self._sig = self._signature()
            if self._sig is None:
                raise FileNotFoundError(f"API key file {self.path} does not exist (lockstep serve-keys add creates it)")
            self._file = read_key_file(self.path)
        self._entries = self._env + self._file

    @property
    def configured(self) -> bool:
        """Whether keys are required: a key file or environment entries were given (even if every key
        was revoked since: then nothing is accepted)."""
        return self.path is not None or bool(self._env)

    @property
    def key_ids(self) -> list[str]:
        return [e.key_id for e in self._entries]

    def check(self, presented: str | None) -> str | None:
        """The id of the key ``presented`` is, or None (missing, malformed, unknown or revoked)."""
        self._maybe_reload()
        if not presented or len(presented) > MAX_KEY_CHARS:
            return None
        digest = hashlib.sha256(presented.encode()).digest()
        found = None
        for e in self._entries:  # every entry, no early exit
            if hmac.compare_digest(e.digest, digest):
                found = e.key_id
        return found

    def _signature(self):
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _maybe_reload(self) -> None:
        if self.path is None:
            return
        now = self._clock()
        if now - self._checked < self.reload_s:
            return
        self._checked = now
        sig = self._signature()
        if sig == self._sig:
            return
        self._sig = sig
        try:
            self._file = [] if sig is None else read_key_file(self.path, strict=False)
        except OSError as exc:
            log.error("API keys: cannot read %s (%s): no key from it is accepted", self.path, type(exc).__name__)
            self._file = []
        if sig is None:
            log.error("API keys: %s is gone: no key from it is accepted", self.path)
        self._entries = self._env + self._file
        self.reloads += 1
        log.info("API keys: %s reloaded, %d key(s)", self.path, len(self._file))
