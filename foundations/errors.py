"""The toolkit's error types and the exit-code convention every command follows.

* :class:`UsageError` — a wrong flag or flag combination: one ``error:`` line, exit status 2.
* :class:`UserError` — a problem with the user's files, ids or values (a missing file, a malformed record, a
  dimension mismatch): one ``error:`` line naming the file/id and what was expected, exit status 1.
* anything else is a bug and ends in its traceback (``vlt5r`` never hides those).

Both are ``ValueError`` subclasses so library callers can keep catching ``ValueError``. Rooms subclass
:class:`UserError` for their own kinds (``ConfigError``, ``FormatError``, ``FeatureFileError``...).
"""

from __future__ import annotations


class UserError(ValueError):
    """A problem with the user's input (file, id, value) that the user can fix; exit status 1, one line."""


class UsageError(UserError):
    """A wrong command line (unknown flag, missing flag, bad combination); exit status 2, one line."""


class ConfigError(UserError):
    """A config is invalid or has unknown keys; the message names the field and the expected value."""


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` folded onto one line (or its type name when it has none)."""
    return " ".join(str(exc).split()) or type(exc).__name__
