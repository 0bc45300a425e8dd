"""Errors that the CLI reports as one line and a non-zero exit (never a traceback)."""


class IsorobustError(Exception):
    """A user-facing error: bad input, missing data, unreadable run directory."""


class ConfigError(IsorobustError):
    """The composed configuration holds values the pipeline cannot run with."""


class DataError(IsorobustError):
    """A data set is missing, truncated or malformed."""


class CheckpointError(IsorobustError):
    """A checkpoint is missing, truncated, of another shape, or not a plain weights file."""
