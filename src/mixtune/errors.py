"""The ground floor of error handling: `UserError`, the base of every error a user can fix.

Each floor keeps its own error class where its checks live (RecipeError in config, DataError in data/formats,
ModelLoadError in model/load, RunLockedError and DiskFullError in runs, ...); each also inherits `UserError`, so the
one entry point (`mixtune.cli`) prints any of them as one line on stderr and exits 2, whatever verb raised it
(`mixtune --debug <verb>` shows the traceback instead). A bug is not a UserError: it keeps its traceback.

A user error's message says what is wrong, where (file, record, field or recipe key) and how to fix it. Messages that
list many problems (a data file with several bad records) keep the list in `details`; `one_line()` is the header plus
the first problem and a count.
"""

from __future__ import annotations

EXIT_USER_ERROR = 2
"""Exit status of a verb stopped by a user error (argparse uses 2 for bad arguments as well)."""


class UserError(Exception):
    """An error the user can fix (bad recipe, data, model folder, a locked or full disk...): one line, exit 2."""

    def one_line(self) -> str:
        """The message on one line: its first line, then the second (the first listed problem) and how many more:
        `header (problem)` or `header (first: problem; +2 more)`."""
        lines = [ln.strip() for ln in str(self).splitlines() if ln.strip()]
        if len(lines) < 2:
            return lines[0] if lines else type(self).__name__
        more = len(lines) - 2
        return f"{lines[0]} ({'first: ' if more else ''}{lines[1]}{f'; +{more} more' if more else ''})"
