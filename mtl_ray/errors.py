"""The one exception type for mistakes in what the user gave us.

The CLI turns a `UserError` into a single line on stderr and exit code 2; anything else is a bug
and keeps its traceback (exit 1).
"""


class UserError(Exception):
    """Bad input: a path, file, column, row, key or value the user supplied. Message is one line."""
