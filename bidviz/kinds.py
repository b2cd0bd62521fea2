"""The one table of command kinds. Depends on nothing of ours but `bidviz.errors`.

Each kind is one `Kind` entry: its argument schema (the only validation of its args), its journal label, its CLI
verb and help, whether it is idempotent (re-applied after a crash mid-apply instead of answered `Interrupted`),
and the names of its behaviours inside training (`admit`, `apply`, `replay`: attributes of
`bidviz.bridge.effects`, resolved by the bridge; this module never imports the bridge, so clients stay light).
`protocol`, the Bridge, the replay, the CLI and the tab (through `GET kinds`) all read this table.

Adding a kind is one entry here, its behaviours in `bidviz.bridge.effects`, and its tests.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ProtocolError
from .rule_examples import EXAMPLES

METRIC_KINDS = ("auto", "scalar", "histogram", "image", "text")
#: how a metric's values of the ranks of a distributed job become one: rank 0's, reduced, or one series per rank
REDUCTIONS = ("rank0", "mean", "sum", "max", "min", "all")
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-/@]{0,127}")
MAX_CODE_CHARS = 100_000


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


def check_name(name: object, what: str = "name") -> str:
    """A metric or hyperparameter name: 1-128 of letters, digits and _ . - / @, not starting with . - / @."""
    if not isinstance(name, str) or _NAME_RE.fullmatch(name) is None or ".." in name:
        raise ProtocolError(
            f"{what} must be 1-128 characters of letters, digits and _ . - / @ (not starting with one of . - / @,"
            f" no '..'); received {_short(name)}",
            type="InvalidName",
        )
    return name


def _code(value: object, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ProtocolError(
            f"{what} must be a non-empty string of Python; received {_short(value)}", type="InvalidArgs"
        )
    if len(value) > MAX_CODE_CHARS:
        raise ProtocolError(f"{what} is {len(value)} characters; the limit is {MAX_CODE_CHARS}", type="TooLarge")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ProtocolError(
            f"{what} holds a character that is not valid Unicode text ({e.reason} at {e.start}); send UTF-8 text",
            type="InvalidArgs",
        ) from None
    return value


def _every(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10**9:
        raise ProtocolError(
            f"{what} must be an integer >= 1 (at most 10^9); received {_short(value)}", type="InvalidArgs"
        )
    return value


def _flag(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise ProtocolError(f"{what} must be true or false; received {_short(value)}", type="InvalidArgs")
    return value


def _metric_kind(value: object, what: str) -> str:
    if value not in METRIC_KINDS:
        raise ProtocolError(
            f"{what} must be one of {', '.join(METRIC_KINDS)}; received {_short(value)}", type="InvalidArgs"
        )
    return value  # type: ignore[return-value]


def _reduction(value: object, what: str) -> str:
    if value not in REDUCTIONS:
        raise ProtocolError(
            f"{what} must be one of {', '.join(REDUCTIONS)}; received {_short(value)}", type="InvalidArgs"
        )
    return value  # type: ignore[return-value]


#: which ranks of a distributed job answer an eval: rank 0, or every rank (rank -> repr)
EVAL_RANKS = ("0", "all")


def _ranks(value: object, what: str) -> str:
    if value not in EVAL_RANKS:
        raise ProtocolError(
            f'{what} must be "0" (rank 0 answers) or "all"; received {_short(value)}', type="InvalidArgs"
        )
    return value  # type: ignore[return-value]


def _value(value: object, what: str) -> Any:
    """A hyperparameter value: JSON numbers, strings, booleans, or a list of numbers; checked against the
    registered type and bounds when it is applied."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        if abs(value) >= 2**63:
            raise ProtocolError(
                f"{what} is an integer of {len(str(abs(value)))} digits; the limit is 2^63", type="OutOfBounds"
            )
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ProtocolError(f"{what} must be finite; received {value!r}", type="OutOfBounds")
        return value
    if isinstance(value, list) and len(value) <= 16 and all(isinstance(v, (int, float)) for v in value):
        return [_value(v, what) for v in value]
    raise ProtocolError(
        f"{what} must be a number, a string, true/false or a list of up to 16 numbers; received {_short(value)}",
        type="WrongType",
    )


def _values(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict) or not value or len(value) > 256:
        raise ProtocolError(
            f"{what} must be an object of 1-256 name: value pairs; received {_short(value)}", type="InvalidArgs"
        )
    return {check_name(k, "hyperparameter name"): _value(v, f"value of {k!r}") for k, v in value.items()}


def _step(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise ProtocolError(f"{what} must be a step, an integer >= 0; received {_short(value)}", type="InvalidArgs")
    return value


def _command_id(value: object, what: str) -> str:
    if not isinstance(value, str) or re.fullmatch(r"[0-9a-f]{32}", value) is None:
        raise ProtocolError(
            f"{what} must be a command id (32 hex digits, as `bidviz journal --json` shows); received {_short(value)}",
            type="InvalidArgs",
        )
    return value


def _reason(value: object, what: str) -> str:
    if not isinstance(value, str) or len(value) > 500:
        raise ProtocolError(
            f"{what} must be text of at most 500 characters; received {_short(value)}", type="InvalidArgs"
        )
    return value


def _one_target(args: dict[str, Any]) -> dict[str, Any]:
    if "to" in args and "before" in args:
        raise ProtocolError("rewind takes --to STEP or --before COMMAND_ID, not both", type="InvalidArgs")
    return args


ArgCheck = Callable[[object, str], Any]


@dataclass(frozen=True)
class Arg:
    name: str
    check: ArgCheck
    default: Any = REQUIRED
    help: str = ""


@dataclass(frozen=True)
class Kind:
    """One command kind: everything about it, in one entry."""

    name: str
    args: tuple[Arg, ...]
    label: str  # the journal line: a template over the args, e.g. "set {name}={value}"; alternatives split by " | "
    help: str
    verb: str  # how the CLI spells it
    idempotent: bool = False  # after a crash mid-apply, re-applied on restart instead of answered Interrupted
    now_flag: str | None = None  # a bool arg that, when true, has the mailroom run it at once (never in training)
    admit: str | None = None  # bidviz.bridge.effects attribute: checks and compiles in the mailroom
    apply: str = ""  # bidviz.bridge.effects attribute: the effect, at a step boundary in the training thread
    replay: str | None = None  # bidviz.bridge.effects attribute: what a resumed run restores from an applied one
    combine: Callable[[dict[str, Any]], dict[str, Any]] | None = field(default=None, repr=False)  # cross-arg checks

    def parse_args(self, args: object) -> dict[str, Any]:
        """Validated args with defaults filled in, or ProtocolError naming what was received and what is expected."""
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise ProtocolError(f"'args' must be a JSON object; received {type(args).__name__}", type="InvalidArgs")
        allowed = {a.name: a for a in self.args}
        extra = sorted(str(k) for k in args if k not in allowed)
        if extra:
            raise ProtocolError(
                f"{self.name} takes args {', '.join(allowed) or '(none)'}; "
                f"unknown {', '.join(printable_name(e) for e in extra)}",
                type="InvalidArgs",
            )
        out: dict[str, Any] = {}
        missing = []
        for a in self.args:
            if a.name in args:
                out[a.name] = a.check(args[a.name], f"{self.name} '{a.name}'")
            elif a.default is REQUIRED:
                missing.append(a.name)
            elif a.default is not None:
                out[a.name] = a.default
        if missing:
            required = [a.name for a in self.args if a.default is REQUIRED]
            raise ProtocolError(
                f"{self.name} needs args {', '.join(required)}; missing {', '.join(missing)}", type="InvalidArgs"
            )
        return self.combine(out) if self.combine is not None else out

    def runs_now(self, args: Mapping[str, Any]) -> bool:
        return self.now_flag is not None and bool(args.get(self.now_flag))

    def describe(self, args: Mapping[str, Any]) -> str:
        """The journal label of one command of this kind: `set lr=0.01`, `add_metric gnorm: model.fc.weight...`."""
        shown = {a.name: _shown(args[a.name]) for a in self.args if args.get(a.name) is not None}
        for template in self.label.split(" | "):
            fields = {f for _, f, _, _ in string.Formatter().parse(template) if f}
            if fields <= set(shown):
                return template.format_map(shown)
        return self.name

    def public(self) -> dict[str, Any]:
        """What `GET kinds` tells clients about this kind."""
        return {
            "kind": self.name,
            "verb": self.verb,
            "help": self.help,
            "label": self.label,
            "idempotent": self.idempotent,
            "args": [
                {
                    "name": a.name,
                    "required": a.default is REQUIRED,
                    "default": None if a.default is REQUIRED else a.default,
                    "help": a.help,
                }
                for a in self.args
            ],
        }


def _short(value: object, limit: int = 80) -> str:
    try:
        text = repr(value)
    except Exception:  # a value from a file is plain JSON; this is for callers passing Python objects
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def printable_name(text: str, limit: int = 40) -> str:
    """A name from a file, safe to print: other characters than the name alphabet become '?'."""
    return re.sub(r"[^A-Za-z0-9_.\-/@ ]", "?", text[:limit])


def _shown(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        first = value.strip().splitlines()[0] if value.strip() else ""
        more = "…" if len(first) > 60 or "\n" in value.strip() else ""
        return first[:60] + more
    if isinstance(value, dict):
        return ", ".join(f"{k}={_shown(v)}" for k, v in value.items())
    return _short(value, 60)


def _one_or_many(args: dict[str, Any]) -> dict[str, Any]:
    if "values" in args:
        if "name" in args or "value" in args:
            raise ProtocolError(
                "set_hparam takes name and value, or values {name: value}, not both", type="InvalidArgs"
            )
        return args
    missing = [a for a in ("name", "value") if a not in args]
    if missing:
        raise ProtocolError(
            f"set_hparam needs args name and value (or values {{name: value, ...}}); missing {', '.join(missing)}",
            type="InvalidArgs",
        )
    check_name(args["name"], "hyperparameter name")
    return args


_NAME = Arg("name", lambda v, what: check_name(v, what), help="the metric's name; its series is bidviz/NAME")
_EVERY = Arg("every", _every, 1, "run it every Nth step")

SET_HPARAM = Kind(
    "set_hparam",
    (
        Arg("name", lambda v, what: v, None, "a registered hyperparameter"),
        Arg("value", _value, None, "its new value"),
        Arg("values", _values, None, "several at once: {name: value}; all validated first, then applied together"),
    ),
    label="set {name}={value} | set {values}",
    help="set hyperparameters: NAME=VALUE (VALUE as JSON); all are checked first, then applied together, or none",
    verb="set",
    idempotent=True,
    admit="admit_values",
    apply="assign_values",
    replay="restore_values",
    combine=_one_or_many,
)
ADD_METRIC = Kind(
    "add_metric",
    (
        _NAME,
        Arg("code", _code, help="an expression, or a function body whose return gives the value"),
        _EVERY,
        Arg("replace", _flag, False, "replace a metric of the same name"),
        Arg("kind", _metric_kind, "auto", "how values are written: " + ", ".join(METRIC_KINDS)),
        Arg(
            "reduce",
            _reduction,
            None,
            "on a distributed job: rank 0's value, or the ranks' mean, sum, max or min, or all (one series a rank)",
        ),
        Arg("guard", _flag, None, "the divergence guard watches its values too: NaN, inf (and spikes, when asked)"),
    ),
    label="add metric {name}: {code}",
    help="add a metric from Python code, run every Nth step, written as bidviz/NAME",
    verb="metric add",
    idempotent=True,
    admit="compile_metric_code",
    apply="install_metric",
    replay="restore_metric",
)
REMOVE_METRIC = Kind(
    "remove_metric",
    (_NAME,),
    label="remove metric {name}",
    help="remove a metric",
    verb="metric rm",
    idempotent=True,
    admit="require_metric",
    apply="drop_metric",
    replay="restore_drop",
)
PAUSE_METRIC = Kind(
    "pause_metric",
    (_NAME,),
    label="pause metric {name}",
    help="pause a metric (it keeps its state)",
    verb="metric pause",
    idempotent=True,
    admit="require_metric",
    apply="hold_metric",
    replay="restore_hold",
)
RESUME_METRIC = Kind(
    "resume_metric",
    (_NAME,),
    label="resume metric {name}",
    help="resume a paused or disabled metric",
    verb="metric resume",
    idempotent=True,
    admit="require_metric",
    apply="rerun_metric",
    replay="restore_rerun",
)
ADD_DIAGNOSTICS = Kind(
    "add_diagnostics",
    (_EVERY,),
    label="add diagnostics every {every}",
    help="add the standard diagnostic metrics (grad/weight norms, update ratio, lr, steps/s)",
    verb="diagnostics",
    idempotent=True,
    admit="compile_pack",
    apply="install_pack",
    replay="restore_pack",
)
EVAL = Kind(
    "eval",
    (
        Arg("code", _code, help="statements and/or a last expression, whose value is the result"),
        Arg("now", _flag, False, "run at once in the mailroom thread, not at a step boundary (for a stuck run)"),
        Arg("ranks", _ranks, None, 'on a distributed job: "all" answers with every rank\'s result, rank -> repr'),
    ),
    label="eval {code}",
    help="run Python code against the live model; prints the result or the traceback",
    verb="eval",
    now_flag="now",
    admit="compile_terminal",
    apply="run_terminal",
)
_REASON = Arg("reason", _reason, None, "why (kept in the journal and shown in state)")
PAUSE = Kind(
    "pause",
    (_REASON,),
    label="pause: {reason} | pause",
    help="pause training at the next step",
    verb="pause",
    idempotent=True,
    apply="hold_training",
)
RESUME = Kind(
    "resume", (), label="resume", help="resume a paused run", verb="resume", idempotent=True, apply="release_training"
)
STOP = Kind(
    "stop",
    (_REASON,),
    label="stop: {reason} | stop",
    help="stop training (should_stop turns true)",
    verb="stop",
    idempotent=True,
    apply="end_training",
)

SNAPSHOT = Kind(
    "snapshot",
    (_REASON,),
    label="snapshot: {reason} | snapshot",
    help="keep a snapshot now (model, optimizers, schedulers, RNG) to rewind to later",
    verb="snapshot",
    apply="take_snapshot",
)
REWIND = Kind(
    "rewind",
    (
        Arg("to", _step, None, "the newest snapshot taken at or before this step"),
        Arg("before", _command_id, None, "the snapshot taken right before this command (a change, or a rewind)"),
        _REASON,
    ),
    label="rewind to step {to} | rewind before {before} | rewind",
    help="restore a snapshot at the next step (the newest one unless --to or --before); itself undoable",
    verb="rewind",
    apply="rewind_to_snapshot",  # a resumed run keeps the values it restored: the journal's `rewound` event
    combine=_one_target,
)
_RULE_NAME = Arg("name", lambda v, what: check_name(v, what), help="the rule's name")
ADD_RULE = Kind(
    "add_rule",
    (
        _RULE_NAME,
        Arg(
            "code", _code, help="code like a metric's that acts through set(...), pause(), stop(), snapshot(), rewind()"
        ),
        _EVERY,
        Arg("cooldown", _every, 100, "after it acts, the rule rests this many steps"),
        Arg("replace", _flag, False, "replace a rule of the same name"),
    ),
    label="add rule {name}: {code}",
    help="add a live rule: code run every Nth step that may act (set, pause, stop, snapshot, rewind)",
    verb="rule add",
    idempotent=True,
    admit="compile_rule_code",
    apply="install_rule",  # a name taken (without replace) or unknown is checked here, where the rules live
    replay="restore_rule",
)
REMOVE_RULE = Kind(
    "remove_rule",
    (_RULE_NAME,),
    label="remove rule {name}",
    help="remove a rule",
    verb="rule rm",
    idempotent=True,
    apply="drop_rule",
    replay="restore_rule_drop",
)
PAUSE_RULE = Kind(
    "pause_rule",
    (_RULE_NAME,),
    label="pause rule {name}",
    help="pause a rule (it keeps its state)",
    verb="rule pause",
    idempotent=True,
    apply="hold_rule",
    replay="restore_rule_hold",
)
RESUME_RULE = Kind(
    "resume_rule",
    (_RULE_NAME,),
    label="resume rule {name}",
    help="resume a paused or disabled rule",
    verb="rule resume",
    idempotent=True,
    apply="rerun_rule",
    replay="restore_rule_rerun",
)

#: every kind by its wire name, in the order the CLI and the tab list them
KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        SET_HPARAM,
        ADD_METRIC,
        REMOVE_METRIC,
        PAUSE_METRIC,
        RESUME_METRIC,
        ADD_DIAGNOSTICS,
        EVAL,
        PAUSE,
        RESUME,
        STOP,
        SNAPSHOT,
        REWIND,
        ADD_RULE,
        REMOVE_RULE,
        PAUSE_RULE,
        RESUME_RULE,
    )
}


def get(kind: object) -> Kind:
    """The entry of `kind`, or ProtocolError listing the kinds there are."""
    entry = KINDS.get(kind) if isinstance(kind, str) else None
    if entry is None:
        raise ProtocolError(f"unknown kind {_short(kind)}; expected one of {', '.join(KINDS)}", type="UnknownKind")
    return entry


# -- metric sets: the file `bidviz metric export` writes and `import` reads (and the tab, via GET kinds) -----------

METRIC_SET_FORMAT = "bidviz_metrics"  # the key that marks a metric set; its value is the format's version
METRIC_SET_VERSION = 1
METRIC_SET_FIELDS = ("name", "code", "every", "kind", "reduce")
RULE_SET_FIELDS = ("name", "code", "every", "cooldown")  # a set's optional "rules": live rules go with the metrics


def metric_set(
    metrics: Mapping[str, Mapping[str, Any]], rules: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, Any]:
    """A metric set from `state.json`'s metrics mapping (and its rules, under "rules", when there are any)."""
    out = {
        METRIC_SET_FORMAT: METRIC_SET_VERSION,
        "metrics": [
            {
                "name": name,
                "code": m.get("code"),
                "every": m.get("every", 1),
                "kind": m.get("kind", "auto"),
                **({"reduce": m["reduce"]} if m.get("reduce", "rank0") != "rank0" else {}),
            }
            for name, m in metrics.items()
        ],
    }
    if rules:
        out["rules"] = [{"name": n, **{f: r.get(f) for f in RULE_SET_FIELDS[1:]}} for n, r in rules.items()]
    return out


def read_metric_set(obj: object) -> list[dict[str, Any]]:
    """The `add_metric` args (with replace) of every metric of a metric set, validated; ProtocolError otherwise."""
    if not (isinstance(obj, dict) and obj.get(METRIC_SET_FORMAT) == METRIC_SET_VERSION):
        raise ProtocolError(
            f'a metric set is {{"{METRIC_SET_FORMAT}": {METRIC_SET_VERSION}, "metrics": [...]}} as `bidviz metric '
            f"export` writes it; received {_short(obj)}",
            type="BadMetricSet",
        )
    return _set_entries(obj.get("metrics"), "metric", ADD_METRIC, METRIC_SET_FIELDS)


def read_rule_set(obj: object) -> list[dict[str, Any]]:
    """The `add_rule` args (with replace) of the rules of a metric set (none when it has no "rules"), validated;
    call `read_metric_set` first (it checks the set itself)."""
    return _set_entries(obj.get("rules", []) if isinstance(obj, dict) else [], "rule", ADD_RULE, RULE_SET_FIELDS)


def _set_entries(entries: object, what: str, kind: Kind, fields: tuple[str, ...]) -> list[dict[str, Any]]:
    """The args of `kind` (with replace) of each entry of a metric set's list, each validated, naming a bad one."""
    if not isinstance(entries, list):
        raise ProtocolError(f"'{what}s' must be a list; received {_short(entries)}", type="BadMetricSet")
    out = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ProtocolError(f"{what} #{i + 1} must be an object; received {_short(entry)}", type="BadMetricSet")
        args = {k: entry[k] for k in fields if k in entry and entry[k] is not None}
        try:
            out.append(kind.parse_args({**args, "replace": True}))
        except ProtocolError as e:
            raise ProtocolError(f"{what} #{i + 1} ({_short(entry.get('name'))}): {e}", type="BadMetricSet") from None
    return out


def public_table() -> dict[str, Any]:
    """`GET kinds`: the command kinds, the metric kinds and the metric-set format."""
    return {
        "kinds": [k.public() for k in KINDS.values()],
        "metric_kinds": list(METRIC_KINDS),
        "metric_set": {
            "key": METRIC_SET_FORMAT,
            "version": METRIC_SET_VERSION,
            "fields": list(METRIC_SET_FIELDS),
            "rule_fields": list(RULE_SET_FIELDS),
        },
        "rule_examples": dict(EXAMPLES),
    }
