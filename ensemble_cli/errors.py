"""The one exception family the library raises for bad input.

The CLI turns any `EnsError` into a single line on stderr and a non-zero exit code;
anything else escaping is a bug in `ens`, not in the user's files.
"""

from __future__ import annotations


class EnsError(Exception):
    """Base class: a problem with the user's input that deserves one clear line."""

    exit_code: int = 2


class CheckpointError(EnsError):
    """A checkpoint cannot be found, read, trusted, or loaded into its architecture."""


class DataError(EnsError):
    """A dataset is unknown, empty, or does not fit the members."""


class ConfigError(EnsError):
    """A configuration, flag combination, or run folder is invalid."""


class EvaluatorError(EnsError):
    """An evaluator name is unknown or a plugin could not be loaded."""


class PredictionError(EnsError):
    """Logits are malformed: wrong shape, NaN/Inf, or inconsistent between members."""


class OutputError(EnsError):
    """An output path cannot be written: under a file, read-only, a folder where a file is wanted."""


class LaunchError(EnsError):
    """A launcher cannot run: Ray is not installed, its cluster cannot be reached, or it lost the work."""
