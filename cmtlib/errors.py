"""The one family of errors a user can fix: the `cmt` command prints their message in one line
(exit 2); every other exception is a programming error and shows its traceback.

Each component raises its own subclass (ManifestError, ParamsError, CacheError, ...), defined where
the component lives and subclassing `CmtError`, so a caller can catch one component's problems or
all of them. Errors that are also lookups (an unknown model, collection kind or classifier name:
STYLE.md rule 3) subclass `CmtLookupError`, which is a `KeyError` too, so `except KeyError` in a
caller keeps working while the message still reads as a sentence.
"""

from __future__ import annotations


class CmtError(Exception):
    """A problem in the user's input or environment; the message says what to fix."""


class CmtLookupError(CmtError, KeyError):
    """An unknown name; the message lists the valid ones."""

    def __str__(self) -> str:
        # KeyError's str() quotes its argument ("'unknown model ...'"); a sentence reads better bare.
        return str(self.args[0]) if self.args else ""


class UnknownNameError(CmtLookupError):
    """A registry, importer or classifier name that is not registered."""


class MissingInputError(CmtError, FileNotFoundError):
    """A file or folder the user named, or that a run needs, is not there; says how to make it."""


class RunFolderError(CmtError, FileExistsError):
    """A run folder that is already taken or holds something else than a run."""


class ConfigError(CmtError, ValueError):
    """A setting that cannot be used as given (device, precision, epochs, ...)."""


class DataFileError(CmtError):
    """A data file (metadata CSV, annotation JSON) that cannot be read at all; names the file."""
