"""The `bidviz` command line: send commands to a run's bridge, read its state and journal, export its series.

It imports only the shared contract (`bidviz.protocol`, `bidviz.channel`) and the standard library, so it
starts fast and never needs torch or tensorboard; `export` loads the event-file reader when it runs.

Exit status: 0 applied, 1 rejected or failed, 2 usage, 3 no response in time (or no mailbox at all).

The modules: `errors` (exit statuses, CliError), `types` (shared aliases), `output` (formatting and printing),
`sending` (build, sign, deliver, wait, report), `reading` (a run's mailbox and state.json), the verbs by topic
(`runs`: status and journal; `steering`: set, diagnostics, eval, pause/resume/stop; `metrics`: the metric verbs;
`export`: scalar series), and `parser` (the argparse tree and `main`).
"""

from __future__ import annotations

from bidviz.cli.parser import build_parser, main

__all__ = ["build_parser", "main"]
