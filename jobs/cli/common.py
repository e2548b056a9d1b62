"""What every ``lockstep`` command shares besides ``jobs.config.Config.from_args``: its day ranges and the
``--model`` / ``--source`` / ``--feature-set`` flags naming the declarations it works on."""

from __future__ import annotations

from jobs.lake import LakeError, day_range


def days(ds_from: str, ds_to: str | None = None) -> list[str]:
    """The days of a command's ``--ds``/``--from`` .. ``--to`` flags (``jobs.lake.day_range``); a bad day
    or an empty range is a usage error (``ValueError``, printed by ``jobs.cli.main``)."""
    try:
        return day_range(ds_from, ds_to)
    except LakeError as exc:
        raise ValueError(str(exc)) from None


# ---- naming the declarations --------------------------------------------------------------------------
def add_model_arg(parser, help: str | None = None) -> None:
    """``--model NAME``: a declared model (default: the repo's only model, else the first by name)."""
    parser.add_argument(
        "--model", help=help or "the declared model (default: the repo's only model, else the first by name)"
    )


def add_source_arg(parser, help: str | None = None) -> None:
    """``--source NAME``: a declared source (default: the repo's only source, else the first by name)."""
    parser.add_argument(
        "--source", help=help or "the declared source (default: the repo's only source, else the first by name)"
    )


def add_feature_set_arg(parser, help: str | None = None) -> None:
    """``--feature-set NAME``: a declared feature set (default: the default model's first set)."""
    parser.add_argument(
        "--feature-set",
        dest="feature_set",
        help=help or "the declared feature set (default: the default model's first set, else the first by name)",
    )


def model_name(cfg, args) -> str:
    """The ``--model`` of ``args`` checked against ``cfg.repo()``, else the repo's default model.
    An unknown name is a usage error (``KeyError`` listing the known ones)."""
    repo = cfg.repo()
    name = getattr(args, "model", None)
    return repo.model(name).name if name else repo.default_model().name


def source_name(cfg, args) -> str:
    """The ``--source`` of ``args`` checked against ``cfg.repo()``, else the only/first source by name."""
    repo = cfg.repo()
    name = getattr(args, "source", None)
    if name:
        return repo.source(name).name
    if not repo.sources:
        raise KeyError("the repo declares no source")
    return sorted(repo.sources)[0]


def feature_set_name(cfg, args) -> str:
    """The ``--feature-set`` of ``args`` checked against ``cfg.repo()``, else the default model's first set,
    else the first set by name."""
    repo = cfg.repo()
    name = getattr(args, "feature_set", None)
    if name:
        return repo.feature_set(name).name
    if repo.models:
        return repo.default_model().feature_sets[0].name
    if not repo.feature_sets:
        raise KeyError("the repo declares no feature set")
    return sorted(repo.feature_sets)[0]


def staged_note(lake, manifests) -> str | None:
    """A line naming the written days that were staged over a validated version (not yet what readers
    get: ``lockstep validate`` swaps each in when it passes), or None when every one was published."""
    staged = [m.ds for m in manifests if lake.table(m.table).manifest(m.ds) != m]
    if not staged:
        return None
    return (
        f"{len(staged)} day(s) staged over their validated version, readers keep it until `lockstep validate` "
        f"passes: {', '.join(staged[:10])}{' ...' if len(staged) > 10 else ''}"
    )
