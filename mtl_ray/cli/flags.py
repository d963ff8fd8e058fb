"""Flags shared by the commands, and flags generated from config fields.

A flag that mirrors a config key (`--epochs` for `TrainConfig.epochs`) is made by `config_flag`
from the pydantic field, as Ray's benchmark `config.py` does: its type and range, its choices (a
`Literal`), and its help — the field's description and default — so a description lives once. The
command's handler turns the flags given into config overrides with `overrides(args, section)`;
flags left out keep the config file's value.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Callable
from typing import Any

from annotated_types import Ge, Gt
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from mtl_ray.errors import UserError

CONFIG_FLAGS = "_config_flags"
"""Parser default holding {section: [(dest, key, to_value)]}: which flags mirror which config keys."""


def add_command(
    sub: argparse._SubParsersAction, name: str, help: str, handler: Callable[[argparse.Namespace], Any]
) -> argparse.ArgumentParser:
    """A command's parser with the flags every command has (`--json`, `--quiet`); `handler` is called
    with the parsed arguments and returns the command's `Result`."""
    p = sub.add_parser(name, help=help, description=help)
    p.add_argument("--json", metavar="FILE", help="write the summary as JSON to FILE ('-' = stdout)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr (errors still show)")
    p.set_defaults(handler=handler)
    return p


def positive_int(text: str, least: int = 1, what: str = "a positive integer") -> int:
    try:
        value = int(text)
    except ValueError:
        value = least - 1
    if value < least:
        raise argparse.ArgumentTypeError(f"{text!r}: expected {what}")
    return value


def count(text: str) -> int:
    return positive_int(text, 0, "an integer ≥ 0")


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive number")
    return value


def task_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def image_size(text: str) -> int | tuple[int, int]:
    """`S` or `H,W` (height first, as in `image_size: [H, W]`)."""
    parts = text.replace("x", ",").split(",")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or min(values, default=0) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive integer S or H,W")
    return values[0] if len(values) == 1 else (values[0], values[1])


def label_rate(text: str) -> tuple[str, float]:
    task, sep, frac = text.partition("=")
    try:
        value = float(frac)
    except ValueError:
        value = -1.0
    if not sep or not task or not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected TASK=FRACTION with FRACTION in [0, 1]")
    return task, value


def from_api(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type from an API parser that raises `UserError` (its message becomes argparse's)."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except UserError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def field_help(model: type[BaseModel], key: str, extra: str = "") -> str:
    """A field's description, then `extra`, then its default when it has a plain one."""
    info: FieldInfo = model.model_fields[key]
    text = info.description or ""
    if extra:
        text = f"{text}; {extra}" if text else extra
    default = None if info.is_required() else info.get_default(call_default_factory=False)
    if default is not None and not isinstance(default, (dict, list, BaseModel)) and default is not False:
        shown = default if isinstance(default, str) else repr(default)
        text = f"{text} (default {shown})" if text else f"default {shown}"
    return text


def _arguments(info: FieldInfo) -> dict[str, Any]:
    """argparse keywords for a field's annotation: store_true for bool, choices for a Literal, a
    checked int or float for numbers with a lower bound, the image-size parser for `S | [H, W]`."""
    annotation = info.annotation
    optional = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    inner = [a for a in typing.get_args(annotation) if a is not type(None)] if optional else [annotation]
    if inner == [bool]:
        return {"action": "store_true"}
    if typing.get_origin(inner[0]) is typing.Literal:
        return {"choices": list(typing.get_args(inner[0]))}
    if len(inner) > 1 and int in inner:
        return {"type": image_size, "metavar": "S|H,W"}
    low = next((m for m in info.metadata if isinstance(m, (Ge, Gt))), None)
    if inner == [int]:
        least = (low.ge if isinstance(low, Ge) else low.gt + 1) if low else None
        if least is None:
            return {"type": int}
        what = "a positive integer" if least == 1 else f"an integer ≥ {least}"
        return {"type": lambda text: positive_int(text, least, what), "metavar": "N"}
    if inner == [float]:
        return {"type": positive_float if isinstance(low, Gt) else float, "metavar": "X"}
    return {}


def config_flag(
    p: argparse.ArgumentParser,
    model: type[BaseModel],
    field: str,
    *,
    key: str | None = None,
    section: str = "train",
    flag: str | None = None,
    extra: str = "",
    to_value: Callable[[Any], Any] | None = None,
    **kwargs: Any,
) -> None:
    """Add the flag for `model`'s `field` (default `--field-with-dashes`) to `p`. Its value becomes the
    override of `key` (default: the field) in `section`, through `to_value` when given: `--weighting
    NAME` is WeightingConfig's `name`, overriding `weighting` with `{name: NAME}`."""
    info = model.model_fields[field]
    flag = flag or "--" + field.replace("_", "-")
    dest = flag.lstrip("-").replace("-", "_")
    arguments = {**_arguments(info), "help": field_help(model, field, extra), **kwargs}
    p.add_argument(flag, dest=dest, **arguments)
    registered = p.get_default(CONFIG_FLAGS) or {}
    registered.setdefault(section, []).append((dest, key or field, to_value))
    p.set_defaults(**{CONFIG_FLAGS: registered})


def overrides(args: argparse.Namespace, section: str = "train") -> dict[str, Any]:
    """{config key: value} of the flags of `section` that were given (a store_true flag left off is
    not given: the config file's value stands)."""
    out = {}
    for dest, key, to_value in (getattr(args, CONFIG_FLAGS, None) or {}).get(section, []):
        value = getattr(args, dest)
        if value is None or value is False:
            continue
        out[key] = to_value(value) if to_value else value
    return out
