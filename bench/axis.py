"""How an axis is declared: a BenchSpec field that is a column of every table and, with its help
and parser, a command-line option of every harness that takes it (bench.sweep.cli adds it)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.parsers import SpecError, parse_choices, parse_int_list

# An axis's parser: (option, option text, spec) -> the axis's values, or SpecError with the line
# the user reads. `spec` holds the single-valued axes declared above it (attention reads preset
# and image_size); bench.sweep.cli expands the lists into the grid.
AxisParser = Callable[[str, object, object], list]


@dataclass(frozen=True)
class AxisOption:
    """How an axis is given on the command line (bench.sweep.cli adds and parses it)."""

    help: str  # argparse's: %(default)s is the default option text
    parse: AxisParser
    text: object  # the default option text (a harness may give its own)
    option: str | None = None  # default: "--" and the field name with "-" for "_"
    group: str = "axes"  # "axes" (comma lists), "ranks" or "run" (bench.sweep.cli.GROUPS)
    common: bool = True  # an option of every harness that takes the common axes
    type: Callable | None = None  # argparse's type, for a single number (--image-size)
    const: str | None = None  # the value of the option given alone (argparse's nargs="?")

    def flag(self, name: str) -> str:
        return self.option or "--" + name.replace("_", "-")


_FIELD_DEFAULT = object()  # axis(text=...) not given: the option's default is str(default)


def axis(
    default,
    quiet: bool = False,
    *,
    help: str | None = None,
    parse: AxisParser | None = None,
    text: object = _FIELD_DEFAULT,
    **option,
) -> dataclasses.Field:
    """A spec field that is a column of every results table, so tables can vary along it; a
    quiet axis belongs to some harnesses and goes unsaid while at its default. Given `help` and
    `parse`, it is also a command-line option of every harness that takes it, a comma list that
    the sweep expands (AxisOption: `text` is the default option text, str(default) unless
    given (None: none, as --image-size's "the preset's"), and `option` may set option, group,
    common, type)."""
    metadata = {"axis": "quiet" if quiet else "said"}
    if parse is not None:
        metadata["option"] = AxisOption(
            help=help or "",
            parse=parse,
            text=str(default) if text is _FIELD_DEFAULT else text,
            **option,
        )
    return field(default=default, metadata=metadata)


def int_list(minimum: int = 1) -> AxisParser:
    """A comma list of integers >= minimum."""
    return lambda option, text, spec: parse_int_list(option, text, minimum)


def choice_list(allowed: tuple[str, ...]) -> AxisParser:
    """A comma list of allowed words."""
    return lambda option, text, spec: parse_choices(option, text, allowed)


def one_of(allowed: tuple[str, ...]) -> AxisParser:
    """One allowed word (an axis that takes a single value)."""

    def parse(option: str, text: str, spec) -> list[str]:
        if text not in allowed:
            raise SpecError(f"{option} {text!r} is not allowed: choose from {', '.join(allowed)}.")
        return [text]

    return parse
