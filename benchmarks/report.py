"""What every benchmark does with its result: a line for people, the numbers as JSON for tools."""

from __future__ import annotations

import json
import sys


def compared(ours: float, plain: float, dataloader: float, ceiling: float | None = None) -> tuple[dict, str]:
    """Every benchmark's sides under the JSON keys the benchmark interface names (images/s, and the
    ratios of mtl-ray to each peer), and the start of its line for people."""
    sides = {"mtl_ray": ours, "plain": plain, "dataloader": dataloader}
    if ceiling is not None:
        sides["ceiling"] = ceiling
    summary = {f"{name}_images_per_s": round(value, 1) for name, value in sides.items()}
    summary["ratio"] = round(ours / plain, 3)
    summary["ratio_to_dataloader"] = round(ours / dataloader, 3)
    line = f"mtl-ray {ours:,.0f} img/s  plain {plain:,.0f}  DataLoader {dataloader:,.0f}"
    if ceiling is not None:
        summary["ratio_to_ceiling"] = round(ours / ceiling, 3)
        line += f"  ceiling {ceiling:,.0f}"
    ratios = "  ".join(f"{key} {summary[key]:.3f}" for key in summary if key.startswith("ratio"))
    return summary, f"{line}  {ratios}"


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
