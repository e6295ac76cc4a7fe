"""Turning the user's mistakes found while a trainer starts into :class:`foundations.errors.UserError`.

Loading files and building a model raise plain ``ValueError`` / ``OSError`` from deep inside libraries; before the
first optimizer step every such error is the user's (a bad path, a dimension mismatch), so the engine and the
trainers wrap their setup in :func:`user_errors` and the driver prints one line (exit 1).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from foundations.errors import UserError, one_line


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Re-raise ``ValueError`` / ``OSError`` as :class:`UserError` (one line); a UserError passes unchanged."""
    try:
        yield
    except UserError:
        raise
    except (ValueError, OSError) as exc:
        raise UserError(one_line(exc)) from exc
