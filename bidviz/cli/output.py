"""Formatting and printing: values as typed on the command line, ages, numbers, tables, errors, JSON.

Everything the CLI prints as text goes through `say`, which strips terminal control characters: responses, the
journal, state.json and even run names come from files the CLI did not write, and an escape sequence in a forged
response must not retitle, recolour or rewrite the user's terminal. (`--json` output is escaped by JSON itself.)
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from bidviz import protocol
from bidviz.cli.types import Response

# C0 controls but tab and newline, DEL, C1 controls (8-bit CSI and OSC among them), line/paragraph separators,
# bidirectional overrides and isolates (text that reads differently than it runs), lone surrogates.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def clean(text: str, *, multiline: bool = True) -> str:
    """`text` safe to print to a terminal: control characters and escape sequences become U+FFFD; newlines and
    tabs stay when `multiline`, else they become spaces."""
    text = text.replace("\r\n", "\n")
    if not multiline:
        text = text.replace("\n", " ").replace("\t", " ")
    return _CONTROL.sub("\ufffd", text)


def say(text: str = "", *, err: bool = False) -> None:
    """Print one line (or several) of text, cleaned, to stdout or (`err`) stderr."""
    print(clean(text), file=sys.stderr if err else sys.stdout)


def typed(value: Any) -> str:
    """A value as it would be typed on the command line (JSON), e.g. 0.01, [0.9, 0.99], "adam", true."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        return repr(value)


def short(text: str, width: int) -> str:
    """`text` on one line, cut to `width` characters with an ellipsis."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def age(seconds: float) -> str:
    """A duration as a person reads it: 3.2s, 45s, 12m, 5h, 3d."""
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"


def number(value: Any) -> str:
    """A value of state.json for a table cell: floats to 6 significant digits, None as '-'."""
    if isinstance(value, float):
        return f"{value:.6g}"
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return typed(value)


def at_step(response: Response) -> str:
    step = response.get("step")
    return f" at step {step}" if step is not None else ""


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    """Print aligned columns to stdout (cells cleaned first, so widths are what the terminal shows)."""
    cells = [list(headers), *([clean(c, multiline=False) for c in r] for r in rows)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for row in cells:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def print_json(obj: Any) -> None:
    """`obj` as indented JSON on stdout (control characters come out escaped)."""
    print(json.dumps(obj, indent=2))


def error_line(error: Any) -> str:
    """`<type>: <message>` of a response's or journal entry's error, with the user's line when known."""
    if not error:
        return "unknown error (the response carries no error details)"
    if not isinstance(error, Mapping):
        return f"Error: {error}"
    etype = str(error.get("type") or "Error")
    message = str(error.get("message") or "").strip()
    text = message if message.startswith(f"{etype}:") else f"{etype}: {message}".rstrip(": ")
    line = error.get("line")
    if line is not None and f"line {line}" not in text:
        text += f" (line {line})"
    return text


def print_error(response: Response, label: str | None = None) -> None:
    """A rejected or failed response on stderr: `error: <type>: <message>`, then its traceback."""
    where = f" (in {label})" if label else ""
    status = response.get("status")
    if status not in protocol.STATUSES:
        say(f"error: the bridge answered with unknown status {short(repr(status), 60)}{where}", err=True)
        return
    error = response.get("error")
    say(f"error: {clean(error_line(error), multiline=False)}{where}", err=True)
    traceback = str((error if isinstance(error, Mapping) else {}).get("traceback") or "").rstrip()
    if traceback:
        say(traceback, err=True)
