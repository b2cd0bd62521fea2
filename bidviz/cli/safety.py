"""The safety-net verbs: `snapshot`, `rewind` (to a step, or to before a command: the undo of a change), and the
`rule` verbs (add, ls, rm, pause, resume, examples). Their help comes from the kinds table."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bidviz import kinds
from bidviz.cli.errors import EXIT_OK, EXIT_USAGE, CliError
from bidviz.cli.output import at_step, clean, error_line, number, print_json, say, short, table
from bidviz.cli.reading import read_state
from bidviz.cli.sending import send
from bidviz.cli.types import Args, Response
from bidviz.rule_examples import EXAMPLES


def _size(n: Any) -> str:
    return f"{n / 2**20:.1f} MiB" if isinstance(n, (int, float)) and n >= 2**20 else f"{n} bytes"


def _show_snapshot(args: Args, response: Response) -> None:
    s = response.get("result") or {}
    targets = ", ".join(s.get("targets") or []) or "no objects"
    say(f"snapshot {s.get('id')}{at_step(response)} ({targets}; {_size(s.get('bytes'))}, in {s.get('where')})")


def cmd_snapshot(opts: argparse.Namespace) -> int:
    args = {"reason": opts.reason} if opts.reason else {}
    return send(opts, [(kinds.SNAPSHOT.name, args)], _show_snapshot)


def cmd_rewind(opts: argparse.Namespace) -> int:
    args = {k: v for k, v in (("to", opts.to), ("before", opts.before), ("reason", opts.reason)) if v is not None}

    def show(args: Args, response: Response) -> None:
        r = response.get("result") or {}
        say(str(r.get("note") or f"rewound to {r.get('snapshot')}"))
        say(f"undo this rewind: bidviz rewind {opts.run} --before {response.get('id')}")

    return send(opts, [(kinds.REWIND.name, args)], show)


def _rule_code(opts: argparse.Namespace) -> str:
    given = [x for x in (opts.code, opts.file, opts.example) if x is not None]
    if len(given) != 1:
        raise CliError("give the rule's CODE, or --file FILE, or --example NAME (one of them)", EXIT_USAGE)
    if opts.example is not None:
        return EXAMPLES[opts.example]
    if opts.file is not None:
        try:
            return Path(opts.file).read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise CliError(f"cannot read --file {opts.file}: {getattr(e, 'strerror', None) or e}", EXIT_USAGE) from None
    return sys.stdin.read() if opts.code == "-" else str(opts.code)


def cmd_rule_add(opts: argparse.Namespace) -> int:
    args = {
        "name": opts.name,
        "code": _rule_code(opts),
        "every": opts.every,
        "cooldown": opts.cooldown,
        "replace": opts.replace,
    }

    def show(args: Args, response: Response) -> None:
        say(f"rule {args['name']} added (every {args['every']}, cool-down {args['cooldown']} steps){at_step(response)}")

    return send(opts, [(kinds.ADD_RULE.name, args)], show)


RULE_ACTIONS = {
    kind.verb.removeprefix("rule "): kind for kind in (kinds.REMOVE_RULE, kinds.PAUSE_RULE, kinds.RESUME_RULE)
}


def cmd_rule_simple(opts: argparse.Namespace) -> int:
    kind = RULE_ACTIONS[opts.rule_action]

    def show(args: Args, response: Response) -> None:
        say(f"rule {args['name']}: {(response.get('result') or {}).get('status')}{at_step(response)}")

    return send(opts, [(kind.name, {"name": opts.name})], show)


def rules_of(state: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    rules = state.get("rules") or {}
    return {str(k): v for k, v in rules.items() if isinstance(v, dict)} if isinstance(rules, dict) else {}


def cmd_rule_ls(opts: argparse.Namespace) -> int:
    rules = rules_of(read_state(opts.run))
    if opts.json:
        print_json(rules)
        return EXIT_OK
    if not rules:
        say(f"no rules on {opts.run}", err=True)
        return EXIT_OK
    headers = ["NAME", "STATUS", "EVERY", "COOLDOWN", "FIRED", "LAST", "ERRORS", "CODE"]
    rows = (
        [
            n,
            str(r.get("status", "-")),
            str(r.get("every", "-")),
            str(r.get("cooldown", "-")),
            str(r.get("fired", 0)),
            number(r.get("last_fired")),
            str(r.get("error_count", 0)),
            short(str(r.get("code", "")), 48),
        ]
        for n, r in rules.items()
    )
    table(headers, rows)
    for name, r in rules.items():
        if r.get("last_error"):
            say(f"{clean(name, multiline=False)}: last error: {clean(error_line(r['last_error']), multiline=False)}")
    return EXIT_OK


def cmd_rule_examples(opts: argparse.Namespace) -> int:
    for name, code in EXAMPLES.items():
        say(f"== {name}  (bidviz rule add RUN {name} --example {name})\n{code}\n")
    return EXIT_OK


def add_parsers(sub: Any, send_options: argparse.ArgumentParser, add_verb: Any, positive: Any) -> None:
    """The verbs of this module, on the CLI's sub-parsers (`add_verb` and `positive` are the parser's own)."""
    snap = add_verb(sub, kinds.SNAPSHOT.verb, kinds.SNAPSHOT.help, cmd_snapshot, parents=[send_options])
    snap.add_argument("--reason", metavar="TEXT", help="a note kept with the snapshot")

    rewind = add_verb(sub, kinds.REWIND.verb, kinds.REWIND.help, cmd_rewind, parents=[send_options])
    target = rewind.add_mutually_exclusive_group()
    target.add_argument("--to", type=int, metavar="STEP", help=_help(kinds.REWIND, "to"))
    target.add_argument("--before", metavar="COMMAND_ID", help=_help(kinds.REWIND, "before"))
    rewind.add_argument("--reason", metavar="TEXT", help=_help(kinds.REWIND, "reason"))

    rule = sub.add_parser("rule", help="live rules: code run every Nth step that may act (set, pause, stop, rewind)")
    actions = rule.add_subparsers(dest="action", metavar="ACTION", required=True)
    add = add_verb(actions, "add", kinds.ADD_RULE.help, cmd_rule_add, parents=[send_options])
    add.add_argument("name", metavar="NAME", help=_help(kinds.ADD_RULE, "name"))
    add.add_argument("code", metavar="CODE", nargs="?", help=_help(kinds.ADD_RULE, "code") + "; - reads stdin")
    add.add_argument("--file", metavar="FILE", help="read CODE from FILE")
    add.add_argument("--example", choices=sorted(EXAMPLES), help="a built-in rule (see `bidviz rule examples`)")
    add.add_argument("--every", type=positive, default=1, metavar="N", help=_help(kinds.ADD_RULE, "every"))
    add.add_argument(
        "--cooldown", type=positive, default=100, metavar="STEPS", help=_help(kinds.ADD_RULE, "cooldown") + " (100)"
    )
    add.add_argument("--replace", action="store_true", help=_help(kinds.ADD_RULE, "replace"))
    for action, kind in RULE_ACTIONS.items():
        p = add_verb(actions, action, kind.help, cmd_rule_simple, parents=[send_options], rule_action=action)
        p.add_argument("name", metavar="NAME")
    ls = add_verb(actions, "ls", "list a run's rules from its state.json", cmd_rule_ls, aliases=["list"])
    ls.add_argument("--json", action="store_true", help="print the rules mapping as JSON")
    add_verb(actions, "examples", "print the built-in rules, to copy", cmd_rule_examples, run=False)


def _help(kind: kinds.Kind, name: str) -> str:
    return next(a.help for a in kind.args if a.name == name)
