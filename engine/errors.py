"""Errors a user can act on.

Every message names the problem and the fix, because the CLI and the UI show them verbatim.
"""


class SlimLabError(Exception):
    """Base class: anything raised on purpose for bad input or an unusable environment."""


class ModelNotFoundError(SlimLabError):
    pass


class UnsupportedArchitectureError(SlimLabError):
    pass


class CorruptWeightsError(SlimLabError):
    pass


class DataError(SlimLabError):
    pass


class ConfigError(SlimLabError):
    """A bad argument: ratio out of range, unknown method, malformed recipe."""


class Cancelled(SlimLabError):
    """Raised between steps when the user pressed Stop; nothing was changed."""
