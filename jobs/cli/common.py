"""What every ``lockstep`` command shares besides ``jobs.config.Config.from_args``: its day ranges."""

from __future__ import annotations

from jobs.lake import LakeError, day_range


def days(ds_from: str, ds_to: str | None = None) -> list[str]:
    """The days of a command's ``--ds``/``--from`` .. ``--to`` flags (``jobs.lake.day_range``); a bad day
    or an empty range is a usage error (``ValueError``, printed by ``jobs.cli.main``)."""
    try:
        return day_range(ds_from, ds_to)
    except LakeError as exc:
        raise ValueError(str(exc)) from None
