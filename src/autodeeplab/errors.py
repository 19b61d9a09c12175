"""The one exception type for user errors.

Anything the user can cause and fix (a bad file, a wrong flag, a broken dataset) raises
:class:`AutoDeepLabError` with a one-line message that names the file or field and what is wrong.
The CLI catches exactly this type and prints the message without a traceback; every other
exception is a programming error and keeps its traceback.
"""


class AutoDeepLabError(Exception):
    """A user-facing error: bad input, config, data, genotype or checkpoint."""


class GenotypeError(AutoDeepLabError):
    """A genotype (or arch_params) file or object is malformed."""


class ConfigError(AutoDeepLabError):
    """A configuration key or value is invalid."""


class DataError(AutoDeepLabError):
    """A dataset is missing, broken or in the wrong layout."""


class CheckpointError(AutoDeepLabError):
    """A checkpoint is missing, truncated, corrupt or from an incompatible version."""


def describe_os_error(exc: OSError) -> str:
    """``<path>: <what the system said>`` (both paths of a rename), in one line."""
    paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    reason = exc.strerror or type(exc).__name__
    return f"{' -> '.join(paths)}: {reason}" if paths else reason
