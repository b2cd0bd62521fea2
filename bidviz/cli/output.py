"""Formatting and printing: values as typed on the command line, ages, numbers, tables, errors, JSON."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TextIO

from bidviz import protocol
from bidviz.cli.types import Response


def _value(value: Any) -> str:
    """A value as it would be typed on the command line (JSON), e.g. 0.01, [0.9, 0.99], "adam", true."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _short(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _age(seconds: float) -> str:
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


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return _value(value)


def _at_step(response: Response) -> str:
    step = response.get("step")
    return f" at step {step}" if step is not None else ""


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], out: TextIO) -> None:
    rows = [list(headers), *(list(r) for r in rows)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(headers))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip(), file=out)


def _print_json(obj: Any, out: TextIO | None = None) -> None:
    print(json.dumps(obj, indent=2), file=out or sys.stdout)


def _error_line(error: Mapping[str, Any] | None) -> str:
    """`<type>: <message>` of a response's or journal entry's error, with the user's line when known."""
    if not error:
        return "unknown error (the response carries no error details)"
    etype = str(error.get("type") or "Error")
    message = str(error.get("message") or "").strip()
    text = message if message.startswith(f"{etype}:") else f"{etype}: {message}".rstrip(": ")
    line = error.get("line")
    if line is not None and f"line {line}" not in text:
        text += f" (line {line})"
    return text


def _print_error(response: Response, label: str | None = None) -> None:
    where = f" (in {label})" if label else ""
    status = response.get("status")
    if status not in protocol.STATUSES:
        print(f"error: the bridge answered with unknown status {status!r}{where}", file=sys.stderr)
        return
    error = response.get("error")
    print(f"error: {_error_line(error)}{where}", file=sys.stderr)
    traceback = str((error or {}).get("traceback") or "").rstrip()
    if traceback:
        print(traceback, file=sys.stderr)
