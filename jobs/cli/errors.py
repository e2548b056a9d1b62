"""How a ``lockstep`` command fails: one message naming what failed and why (the table, the day, the file
and line, the database's reason), exit status 1, and the traceback only with the global ``--debug`` flag.

The platform's own errors are the ones a person can act on from the message alone: a missing or corrupt
partition (``jobs.lake.LakeError``), a failed suite (``DataQualityError``), a bad declaration or input
file (``DeclarationError``, ``LandingError`` and every other ``ValueError``), an unknown name
(``KeyError``), a registry refusal, a SQL error (SQLAlchemy's, e.g. an integrity violation). Anything
else is a bug in Lockstep and keeps its traceback.
"""

from __future__ import annotations

import sys
import traceback

#: Exit status of a command that failed on one of the platform's errors.
FAILED = 1


def platform_errors() -> tuple[type[BaseException], ...]:
    """The exception types ``report`` turns into a message (imported when a command fails, not before)."""
    import sqlalchemy.exc

    from jobs.lake import LakeError
    from jobs.models.registry import PromotionRefused, RegistryError
    from jobs.quality.validate import DataQualityError
    from jobs.skew.job import SkewThresholdError

    return (
        ValueError,  # DeclarationError, LandingError, SuiteError, LineageError, a bad --ds, ...
        KeyError,  # an unknown source, feature set, model or parser
        FileNotFoundError,
        LakeError,
        DataQualityError,
        RegistryError,
        PromotionRefused,
        SkewThresholdError,
        sqlalchemy.exc.SQLAlchemyError,
    )


def is_platform_error(exc: BaseException) -> bool:
    return isinstance(exc, platform_errors())


def message(exc: BaseException) -> str:
    """What ``exc`` says, without the noise around it: a ``KeyError``'s text unquoted, a SQL error's
    database reason without the statement and its parameters; then the notes added on the way up
    (``BaseException.add_note``: which partition, which table)."""
    import sqlalchemy.exc

    if isinstance(exc, KeyError) and exc.args:
        text = str(exc.args[0])
    elif isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.orig is not None:
        text = f"{type(exc).__name__}: {exc.orig}"
    else:
        text = str(exc).strip() or type(exc).__name__
    return "; ".join([text, *getattr(exc, "__notes__", ())])


def report(exc: BaseException, command: str, *, debug: bool = False, status: int = FAILED) -> int:
    """Print ``lockstep COMMAND: error: MESSAGE`` on stderr (after the traceback with ``debug``) and
    return ``status``, the command's exit status."""
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    print(f"lockstep {command}: error: {message(exc)}", file=sys.stderr)
    return status
