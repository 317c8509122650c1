"""User-facing errors.

Anything raised as :class:`GeoSearchError` is bad input or a state the user can fix; the CLI prints
its message on one line and exits with code 2, the MCP server turns it into a tool error.
"""


class GeoSearchError(ValueError):
    """A clear, user-facing error (bad input, missing file, mismatched index...)."""


class InputError(GeoSearchError):
    """The input given by the user is invalid."""


class IndexMismatchError(GeoSearchError):
    """An index was built with another model, mosaic or settings than the ones requested."""


class WeightsMissingError(GeoSearchError):
    """Model weights are not on disk and cannot be downloaded."""


class DatabaseLockedError(GeoSearchError):
    """An index another process is writing (DuckDB's file lock)."""


class DatabaseDamagedError(InputError):
    """An index file that is damaged or not an index at all."""
