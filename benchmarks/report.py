"""What every benchmark does with its result: a line for people, the numbers as JSON for tools."""

from __future__ import annotations

import json
import sys


def emit(line: str, summary: dict, target: str | None) -> None:
    """Print `line` (on stderr when the JSON goes to stdout) and write `summary` as JSON to `target`
    ('-' = stdout; None = nowhere)."""
    print(line, file=sys.stderr if target == "-" else sys.stdout, flush=True)
    if target is None:
        return
    text = json.dumps(summary, indent=2) + "\n"
    if target == "-":
        sys.stdout.write(text)
    else:
        with open(target, "w") as f:
            f.write(text)
