"""Model metadata: lineage facts (code commit, environment digest) and the redaction gate.

Everything a model carries into the registry passes ``sanitize``: keys outside the section's
allowlist are dropped, and string values are scanned for secrets and personal data, each
match replaced by ``[REDACTED:<kind>]``. Findings name the key path and the kind, never the
value, so the report itself leaks nothing.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

COMMIT_ENV = "LOCKSTEP_CODE_COMMIT"
_HEX_COMMIT = re.compile(r"^[0-9a-f]{40}$|^[0-9a-f]{64}$")


# ---- lineage facts ------------------------------------------------------------------------------
def code_commit(start: str | os.PathLike | None = None) -> str | None:
    """The commit the code runs from: ``$LOCKSTEP_CODE_COMMIT`` (set by CI/images without a
    checkout), else the checkout's HEAD read from ``.git`` (no git process, no index lock).

    None when neither is available. Uncommitted edits are not detected: build from a clean
    checkout, or set the variable, for a model that is meant to be promoted.
    """
    env = os.environ.get(COMMIT_ENV, "").strip()
    if env:
        return env
    here = Path(start or Path(__file__).resolve().parent)
    for d in (here, *here.parents):
        git = d / ".git"
        if git.is_file():  # a worktree: "gitdir: <path>"
            text = git.read_text().strip()
            if text.startswith("gitdir:"):
                git = (d / text.split(":", 1)[1].strip()).resolve()
        if git.is_dir():
            return _resolve_head(git)
    return None


def _resolve_head(git: Path) -> str | None:
    try:
        head = (git / "HEAD").read_text().strip()
    except OSError:
        return None
    if not head.startswith("ref:"):
        return head if _HEX_COMMIT.match(head) else None
    ref = head.split(":", 1)[1].strip()
    common = git
    if (git / "commondir").is_file():
        common = (git / (git / "commondir").read_text().strip()).resolve()
    for base in (git, common):
        p = base / ref
        if p.is_file():
            sha = p.read_text().strip()
            return sha if _HEX_COMMIT.match(sha) else None
    packed = common / "packed-refs"
    if packed.is_file():
        for line in packed.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1] == ref and _HEX_COMMIT.match(parts[0]):
                return parts[0]
    return None  # an unborn branch


def is_commit(value) -> bool:
    return isinstance(value, str) and bool(_HEX_COMMIT.match(value))


def environment() -> dict[str, str]:
    """Resolved versions of every installed distribution, ``{name: version}``, sorted by name."""
    out: dict[str, str] = {}
    for d in importlib.metadata.distributions():
        name = (d.metadata["Name"] or "").strip()
        if name:
            out[re.sub(r"[-_.]+", "-", name).lower()] = d.version
    return dict(sorted(out.items()))


def environment_digest(env: dict[str, str] | None = None) -> str:
    """sha256 of ``name==version`` lines of the environment."""
    env = environment() if env is None else env
    text = "\n".join(f"{k}=={v}" for k, v in sorted(env.items()))
    return hashlib.sha256(text.encode()).hexdigest()


# ---- detection ----------------------------------------------------------------------------------
_SECRET_KEY = re.compile(
    r"(pass(word|wd)?|pwd|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|"
    r"credential|auth|session|cookie)",
    re.IGNORECASE,
)
_PATTERNS: list[tuple[str, re.Pattern]] = [
    ("private-key", re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(-----END [A-Z ]*PRIVATE KEY-----|$)")),
    ("connection-string", re.compile(r"\b[a-z][a-z0-9+.\-]*://[^\s/@:]+:[^\s/@]+@[^\s]+", re.IGNORECASE)),
    (
        "connection-string",
        re.compile(
            r"\b(postgres(ql)?|mysql|mariadb|mssql|sqlserver|oracle|mongodb(\+srv)?|redis|rediss|amqps?|"
            r"jdbc:[a-z0-9]+|snowflake|clickhouse)(\+[a-z0-9]+)?://[^\s]+",
            re.IGNORECASE,
        ),
    ),
    (
        "connection-string",
        re.compile(r"\b(server|host|data source)\s*=[^;]+;[^\n]*?\b(password|pwd)\s*=[^;\s]+;?", re.IGNORECASE),
    ),
    (
        "credential",
        re.compile(
            r"\b(pass(word|wd)?|pwd|secret|token|api[_-]?key|access[_-]?key|client[_-]?secret)\s*[=:]\s*[^\s,;&]+",
            re.IGNORECASE,
        ),
    ),
    ("token", re.compile(r"\bBearer\s+[A-Za-z0-9\-._~+/]{8,}=*", re.IGNORECASE)),
    ("token", re.compile(r"\beyJ[A-Za-z0-9_\-]{5,}\.eyJ[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]*")),
    ("token", re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b")),
    (
        "token",
        re.compile(
            r"\b(gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{40,}|"
            r"xox[abposr]-[A-Za-z0-9-]{10,}|sk-[A-Za-z0-9_\-]{20,}|AIza[0-9A-Za-z_\-]{35})\b"
        ),
    ),
    ("email", re.compile(r"\b[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}\b")),
]
_CARD = re.compile(r"(?<![\d.])\d(?:[ \-]?\d){12,18}(?![\d.])")


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def scan_text(text: str) -> tuple[str, list[str]]:
    """``text`` with every detected secret/PII span replaced, and the kinds found."""
    kinds: list[str] = []
    for kind, pattern in _PATTERNS:

        def sub(m, kind=kind):
            kinds.append(kind)
            return f"[REDACTED:{kind}]"

        text = pattern.sub(sub, text)

    def card(m):
        digits = re.sub(r"\D", "", m.group(0))
        if 13 <= len(digits) <= 19 and luhn_ok(digits):
            kinds.append("card-number")
            return "[REDACTED:card-number]"
        return m.group(0)

    return _CARD.sub(card, text), kinds


@dataclass(frozen=True)
class Finding:
    path: str
    kind: str  # a detector kind, "secret-key" or "not-allowlisted"

    def __str__(self) -> str:
        return f"{self.path}: {self.kind}"


def redact(value, path: str = "") -> tuple[object, list[Finding]]:
    """Recursively redact strings (and integers that look like card numbers) in a JSON value."""
    findings: list[Finding] = []

    def walk(v, p):
        if isinstance(v, dict):
            out = {}
            for k, x in v.items():
                key_clean, kinds = scan_text(str(k))
                findings.extend(Finding(f"{p}.{key_clean}" if p else key_clean, f"key:{kd}") for kd in kinds)
                sub = f"{p}.{key_clean}" if p else key_clean
                if isinstance(x, str) and x and _SECRET_KEY.search(key_clean):
                    findings.append(Finding(sub, "secret-key"))
                    out[key_clean] = "[REDACTED:secret-key]"
                else:
                    out[key_clean] = walk(x, sub)
            return out
        if isinstance(v, (list, tuple)):
            return [walk(x, f"{p}[{i}]") for i, x in enumerate(v)]
        if isinstance(v, bool) or v is None:
            return v
        if isinstance(v, int):
            clean, kinds = scan_text(str(v))
            if kinds:
                findings.extend(Finding(p, k) for k in kinds)
                return clean
            return v
        if isinstance(v, float):
            return v
        clean, kinds = scan_text(str(v))
        findings.extend(Finding(p, k) for k in kinds)
        return clean

    return walk(value, path), findings


# ---- allowlists ---------------------------------------------------------------------------------
def lightgbm_param_names() -> frozenset[str]:
    """Every LightGBM parameter name and alias (from the library itself)."""
    from lightgbm.basic import _ConfigAliases

    names = set()
    for main, aliases in _ConfigAliases._get_all_param_aliases().items():
        names.add(main)
        names.update(aliases)
    return frozenset(names)


#: Training-job settings recorded beside LightGBM's own parameters.
JOB_PARAMS = frozenset(
    {
        "num_boost_round",
        "patience",
        "backend",
        "construct",
        "save_binary",
        "embargo_days",
        "feature_set",
        "label_definition",
        "horizon_days",
        "train_range",
        "valid_range",
        "holdback_range",
        "best_iteration",
        "n_workers",
    }
)
#: The incremental baseline's settings (``jobs.training.baseline``): SGDClassifier options are ``sgd_*``.
BASELINE_PARAMS = frozenset(
    {"model_flavor", "epochs", "seed", "partitions", "imputation", "missing_indicators", "baseline"}
)
_SGD_PARAM = re.compile(r"^sgd_[a-z0-9_]+$")
_METRIC = re.compile(r"^(baseline_)?(train|valid|holdback)_[a-z0-9_]+$|^best_iteration$|^(train|valid)_rows$")


def allow_param(key: str) -> bool:
    return key in JOB_PARAMS or key in BASELINE_PARAMS or bool(_SGD_PARAM.match(key)) or key in lightgbm_param_names()


def allow_metric(key: str) -> bool:
    return bool(_METRIC.match(key))


def sanitize(section: str, data: dict, allow: Callable[[str], bool]) -> tuple[dict, list[Finding]]:
    """Keep allowlisted keys of ``data`` and redact their values; findings for what was removed."""
    kept, findings = {}, []
    for k, v in data.items():
        if allow(str(k)):
            kept[str(k)] = v
        else:
            clean_key, _ = scan_text(str(k))
            findings.append(Finding(f"{section}.{clean_key}", "not-allowlisted"))
    clean, more = redact(kept, section)
    return clean, findings + more


def finite_metrics(metrics: dict) -> tuple[dict[str, float], list[str]]:
    """Numeric, finite metric values as floats; names of the others."""
    good, bad = {}, []
    for k, v in metrics.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
            bad.append(str(k))
        else:
            good[str(k)] = float(v)
    return good, bad


def dumps(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)
