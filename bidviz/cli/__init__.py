"""The `bidviz` command line: send commands to a run's bridge, read its state and journal, export its series.

It is a shell over the Python client (`bidviz.client`, which sends and waits) and imports only the shared contract
(`bidviz.protocol`, `bidviz.channel`), the table of command kinds
(`bidviz.kinds`: kind names, verb help, metric kinds, the metric-set format), what clients show about runs
(`bidviz.runs`, `bidviz.series`), the control token's file (`bidviz.tb_plugin.control_token`, standard library only)
and the standard library, so it starts fast and never needs torch or tensorboard;
`export` loads the event-file reader when it runs. Everything it prints is stripped of terminal escapes
(`output.say`): the files it reads are not its own.

Exit status: 0 applied, 1 rejected or failed (or a mailbox file that is corrupt or unreadable), 2 usage (including
a mailbox refused as not the user's own, and a file system that cannot be written), 3 no response in time (or no
mailbox at all).

The modules: `errors` (exit statuses, CliError), `types` (shared aliases), `output` (formatting and printing),
`sending` (build, sign, deliver, wait, report), `reading` (a run's mailbox and state.json), the verbs by topic
(`runs`: status and journal; `steering`: set, diagnostics, eval, pause/resume/stop; `metrics`: the metric verbs;
`export`: scalar series; `tablink`: the link that gives the tab the control token), and `parser` (the argparse tree
and `main`).
"""

from __future__ import annotations

from bidviz.cli.parser import build_parser, main

__all__ = ["build_parser", "main"]
