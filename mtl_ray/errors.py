"""The one exception type for mistakes in what the user gave us.

The CLI turns a `UserError` into a single line on stderr and exit code 2; anything else is a bug
and keeps its traceback (exit 1).
"""


class UserError(Exception):
    """Bad input: a path, file, column, row, key or value the user supplied. Message is one line."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type name when the message is empty."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def describe(exc: BaseException) -> str:
    """`Type: first line` of an exception from a library (MLflow, Ray), for one-line errors."""
    return f"{type(exc).__name__}: {first_line(exc)[:200]}"
