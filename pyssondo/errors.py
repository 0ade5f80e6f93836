"""The exception types of pyssondo. The first two are ValueErrors so callers may catch either."""


class ParameterError(ValueError):
    """A setting or argument is outside its valid range; the message names it and the range."""


class AudioError(ValueError):
    """An audio file cannot be used; the message names the file and the problem."""


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message says which ``pip install`` adds it."""
