"""Type aliases shared by the CLI's modules: a command's arguments, a bridge's response, how a verb shows it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Args = dict[str, Any]
Response = dict[str, Any]
#: prints what an applied command did, given the args it was sent with and its response; an int it returns is the
#: exit status (an added metric that failed at its first run: 1)
Show = Callable[[Args, Response], "int | None"]
