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


def user_error_in(exc: BaseException) -> UserError | None:
    """The UserError behind an exception from Ray, as its own one line, or None.

    A UserError raised in a Ray Train worker or a Ray Data task reaches the driver wrapped: in a
    `RayTaskError` (its `cause`), in Ray Train's worker-group error (`worker_failures`), or chained
    as `__cause__`. The wrappers' messages carry tracebacks; the user needs the one line.
    """
    seen: set[int] = set()
    pending = [exc]
    while pending:
        current = pending.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, UserError) and type(current).__module__.startswith("mtl_ray"):
            return UserError(first_line(current))
        failures = getattr(current, "worker_failures", None) or {}
        pending += [getattr(current, "cause", None), current.__cause__, current.__context__, *failures.values()]
    return None
