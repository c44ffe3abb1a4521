"""Errors prunekit raises on bad input.

Every error names the thing that was wrong and what was expected, so the CLI can print it as one
line. They all derive from :class:`PrunekitError`; each also derives from the built-in exception a
caller would naturally catch (``ValueError``, ``KeyError``, ``FileNotFoundError``).
"""

from __future__ import annotations


class PrunekitError(Exception):
    """Base class of every error prunekit raises on purpose."""


class UnknownNameError(PrunekitError, KeyError):
    """A registry lookup of a name that is not registered."""

    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return str(self.args[0]) if self.args else ""


class ConfigError(PrunekitError, ValueError):
    """An option or argument outside its allowed range or set."""


class DataError(PrunekitError, ValueError):
    """A data file that is missing, truncated, corrupt or not in the expected format."""


class MissingFileError(PrunekitError, FileNotFoundError):
    """A file or folder that the user pointed at and that does not exist."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class CheckpointError(PrunekitError, ValueError):
    """A checkpoint that cannot be read or does not match what is asked of it."""


class StaleCheckpointError(CheckpointError):
    """A resume checkpoint whose tensors do not fit the model it is asked to resume: it was
    written for another model (a pruning that produced other widths, e.g. by an older version)."""


class UnsupportedError(PrunekitError, TypeError):
    """A layer or op that the structural core cannot prune through, named with its module path."""


def one_line(text: str) -> str:
    """An error message as one line.

    An error raised in a DataLoader worker process reaches the main process as "Caught X in
    DataLoader worker process N." followed by the worker's traceback; its last line holds the
    original message, which is what is kept. Other messages keep their first line.
    """
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    if not lines:
        return ""
    if len(lines) > 1 and lines[0].startswith("Caught ") and "Traceback" in text:
        name, sep, message = lines[-1].partition(": ")
        return message if sep and ("." in name or name.endswith("Error")) else lines[-1]
    return lines[0]
