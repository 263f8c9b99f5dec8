"""The base class of every error a user can fix (ground floor): a bad recipe, bad data, a missing model, a locked
folder, a full disk, a contaminated study. The CLI prints such an error as one line and exits with code 2."""

from __future__ import annotations


class UserError(Exception):
    """An error in what the user gave (recipe, files, folders); the message says what, where and how to fix it."""
