"""Errors that the CLI reports as one line and a non-zero exit (never a traceback)."""


class IsorobustError(Exception):
    """A user-facing error: bad input, missing data, unreadable run directory."""


class ConfigError(IsorobustError):
    """The composed configuration holds values the pipeline cannot run with."""


class DataError(IsorobustError):
    """A data set is missing, truncated or malformed."""


class CheckpointError(IsorobustError):
    """A checkpoint is missing, truncated, of another shape, or not a plain weights file."""


class Abort(BaseException):
    """A user-facing error raised where a framework would turn an Exception into a traceback (Hydra's
    callbacks): a BaseException passes through it to the CLI, which reports ``error`` as one line."""

    def __init__(self, error: IsorobustError) -> None:
        super().__init__(str(error))
        self.error = error


def find_user_error(exc: BaseException | None) -> IsorobustError | None:
    """The IsorobustError behind ``exc`` (hydra.utils.instantiate wraps what a target raises)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, IsorobustError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None
