"""How a `bidviz` command ends: its exit status, and the one error that ends it early with a sentence."""

from __future__ import annotations

from bidviz.errors import BIDVizError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NO_RESPONSE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class CliError(BIDVizError):
    """Ends the command: `error: <message>` on stderr and exit status `code`."""

    default_type = "CliError"

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message, status="rejected" if code == EXIT_USAGE else "failed")
        self.code = code
