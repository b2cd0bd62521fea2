"""User code: compiled once (in the watcher thread), run in the training thread, values written as series."""

from __future__ import annotations

import ast
import math
import numbers
import traceback
import types
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bidviz.errors import MetricTimeout, ProtocolError, UserCodeExit
from bidviz.protocol import to_json_value
from bidviz.writers.adapters import to_numpy

from .interrupt import HookTimer, OverBudget, traceback_of, type_name

ERRORS_TO_DISABLE = 5
RECENT_KEPT = 60
_FN_NAME = "__bidviz_metric__"
_NS = "__bidviz_ns__"
_SCOPES = (
    ast.FunctionDef,
    ast.AsyncFunctionDef,
    ast.ClassDef,
    ast.Lambda,
    ast.ListComp,
    ast.SetComp,
    ast.DictComp,
    ast.GeneratorExp,
)


def compile_metric(name: str, code: str) -> types.CodeType:
    """Compile `code` into the code object of `def f(state): ...`, keeping the user's line numbers.

    One expression yields its value; anything else is a function body whose `return` gives the value.
    """
    filename = f"<metric {name}>"
    tree = _parse(code, filename)
    body = tree.body
    if len(body) == 1 and isinstance(body[0], ast.Expr):
        body = [ast.Return(value=body[0].value, lineno=body[0].lineno, col_offset=body[0].col_offset)]
    return _function_code(body, filename)


def compile_eval(code: str) -> tuple[types.CodeType | None, types.CodeType | None]:
    """A terminal command as (statements, last expression): REPL semantics, the last expression is the result."""
    filename = "<eval>"
    tree = _parse(code, filename)
    last = None
    tail = tree.body[-1] if tree.body else None
    if isinstance(tail, ast.Expr):
        tree.body.pop()
        last = ast.Expression(body=tail.value)
        ast.copy_location(last, tail.value)
    try:
        stmts = compile(tree, filename, "exec") if tree.body else None
        expr = compile(last, filename, "eval") if last is not None else None
    except SyntaxError as e:
        raise _syntax_error(e, code) from None
    return stmts, expr


def _parse(code: str, filename: str) -> ast.Module:
    try:
        return ast.parse(code, filename, "exec")
    except SyntaxError as e:
        raise _syntax_error(e, code) from None


def _bound_names(body: list[ast.stmt]) -> list[str]:
    """Names the body assigns at its own level: in a function these would be local from the first line on."""
    names: dict[str, None] = {}
    declared: set[str] = set()
    todo: list[ast.AST] = list(body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names[node.id] = None
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            declared.update(node.names)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names[node.name] = None
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update({(a.asname or a.name).split(".")[0]: None for a in node.names})
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names[node.name] = None
            todo.extend(node.decorator_list)
        if not isinstance(node, _SCOPES):
            todo.extend(ast.iter_child_nodes(node))
    return [n for n in names if n not in declared and n not in ("state", _NS)]


def _prelude(names: list[str]) -> list[ast.stmt]:
    """`if 'loss' in ns: loss = ns['loss']` for each name the body assigns, so that `loss = loss.item()` reads
    the step's `loss` first, as it would at module level, instead of failing with UnboundLocalError."""
    ns = ast.Name(id=_NS, ctx=ast.Load())
    return [
        ast.If(
            test=ast.Compare(left=ast.Constant(n), ops=[ast.In()], comparators=[ns]),
            body=[
                ast.Assign(
                    targets=[ast.Name(id=n, ctx=ast.Store())], value=ast.Subscript(ns, ast.Constant(n), ast.Load())
                )
            ],
            orelse=[],
        )
        for n in names
    ]


def _function_code(body: list[ast.stmt], filename: str) -> types.CodeType:
    # The namespace comes in as a keyword-only argument only when the prelude reads it: a call that fills in a
    # keyword default costs a third more, at every step of every metric.
    prelude = _prelude(_bound_names(body))
    fn = ast.FunctionDef(
        name=_FN_NAME,
        args=ast.arguments(
            posonlyargs=[],
            args=[ast.arg(arg="state")],
            vararg=None,
            kwonlyargs=[ast.arg(arg=_NS)] if prelude else [],
            kw_defaults=[None] if prelude else [],
            defaults=[],
        ),
        body=prelude + (body or [ast.Pass()]),
        decorator_list=[],
        returns=None,
        lineno=1,
        col_offset=0,
    )
    if "type_params" in ast.FunctionDef._fields:  # Python 3.12+
        fn.type_params = []  # type: ignore[attr-defined,unused-ignore]
    module = ast.Module(body=[fn], type_ignores=[])
    ast.fix_missing_locations(module)
    try:
        compiled = compile(module, filename, "exec")
    except SyntaxError as e:
        raise _syntax_error(e, None) from None
    return next(c for c in compiled.co_consts if isinstance(c, types.CodeType) and c.co_name == _FN_NAME)


def _syntax_error(e: SyntaxError, code: str | None) -> ProtocolError:
    where = f"line {e.lineno}, column {e.offset}" if e.lineno else "unknown position"
    text = (e.text or "").rstrip("\n")
    caret = f"\n    {text}\n    {' ' * max((e.offset or 1) - 1, 0)}^" if text else ""
    err = ProtocolError(f"{e.msg} ({where}){caret}", type="SyntaxError", line=e.lineno)
    return err


def error_info(exc: BaseException, filename_prefix: str = "<") -> dict[str, Any]:
    """Type, message, traceback (from the user's code on) and the user's line of an exception.

    User code chooses what it raises, and describing it runs user code too: a class made with type() where no
    __name__ is set has no __module__ (the traceback module fails on it), its `__str__` or `__notes__` may raise,
    even SystemExit; each part is described as it can be, and never raises but the budget's interrupt or a Ctrl-C.
    One that never returns is for the caller's budget: `describe_failure`."""
    tb, frames, line = _user_traceback(exc, filename_prefix)
    name = type_name(exc)
    message = _described(lambda: str(exc), f"<str() of this {name} raised an error>")
    text = _described(lambda: "".join(traceback.format_exception(type(exc), exc, tb)), "")
    text = text or _plain_traceback(frames, name, message)
    return {"type": name, "message": message, "traceback": text, "line": line}


def _user_traceback(
    exc: BaseException, filename_prefix: str
) -> tuple[types.TracebackType | None, traceback.StackSummary, int | None]:
    """`exc`'s traceback from the user's code on (a file named `filename_prefix...`: the bridge's own frames above
    it dropped), its frames and the user's last line in them. Runs no user code."""
    tb = traceback_of(exc)
    while tb is not None and not tb.tb_frame.f_code.co_filename.startswith(filename_prefix):
        tb = tb.tb_next
    frames = traceback.extract_tb(tb) if tb is not None else traceback.StackSummary()
    line = next((f.lineno for f in reversed(frames) if f.filename.startswith(filename_prefix)), None)
    return tb, frames, line


def _plain_traceback(frames: traceback.StackSummary, name: str, message: str) -> str:
    """A traceback's text from its frames alone, for an exception that could not be described by the traceback
    module."""
    return f"Traceback (most recent call last):\n{''.join(traceback.format_list(frames))}{name}: {message}\n"


def _described(describe: Callable[[], str], otherwise: str) -> str:
    try:
        return describe()
    except (OverBudget, KeyboardInterrupt):  # the budget's interrupt, or a Ctrl-C: the caller's to handle
        raise
    except BaseException:  # noqa: BLE001 - whatever the user's exception does when described, SystemExit included
        return otherwise


def failure_info(exc: BaseException, filename_prefix: str) -> dict[str, Any]:
    """`error_info` of what user code raised, saying so when it was a BaseException meant to end a program."""
    original = exc.__cause__ if isinstance(exc, UserCodeExit) and exc.__cause__ is not None else exc
    info = error_info(original, filename_prefix)
    if not isinstance(original, Exception):
        said = f"{info['type']}({info['message']})" if info["message"] else info["type"]
        info["message"] = f"{said} {_GOES_ON}"
    return info


def describe_failure(timer: HookTimer, exc: BaseException, filename_prefix: str) -> dict[str, Any]:
    """`failure_info` of what user code raised, under `timer`'s budget (in the calling thread, outside any batch),
    never raising but the process's own Ctrl-C. What describing it raised or ran past the budget (a `__str__`, a
    metaclass's `__name__`, the `__repr__` of its arguments that loops for ever) is said, with the traceback's
    lines, read without running user code."""
    try:
        info: dict[str, Any] = timer.call(failure_info, exc, filename_prefix)
    except KeyboardInterrupt:  # the process's own Ctrl-C (`call` turns a KeyboardInterrupt the code raised into
        raise  # a UserCodeExit)
    except BaseException as e:  # noqa: BLE001 - MetricTimeout or UserCodeExit: describing it failed
        original = exc.__cause__ if isinstance(exc, UserCodeExit) and exc.__cause__ is not None else exc
        name = type_name(original)
        raised = e.__cause__ if e.__cause__ is not None else e  # what the user's code raised (UserCodeExit's cause)
        why = str(e) if isinstance(e, MetricTimeout) else f"raised {type_name(raised)}"
        message = f"<this {name} could not be described: describing it {why}>"
        if not isinstance(original, Exception):
            message = f"{name} {_GOES_ON} {message}"
        _, frames, line = _user_traceback(original, filename_prefix)
        info = {"type": name, "message": message, "traceback": _plain_traceback(frames, name, message), "line": line}
    return info


_GOES_ON = "raised by user code; training goes on (the stop command ends a run)"


@dataclass
class Metric:
    name: str
    code: str
    every: int
    kind: str
    fn: Callable[[dict[str, Any]], Any]
    sender: str = ""
    status: str = "running"  # running | paused | disabled
    state: dict[str, Any] = field(default_factory=dict)
    error_count: int = 0
    errors_in_row: int = 0
    last_error: dict[str, Any] | None = None
    first_error: dict[str, Any] | None = None  # the failure of its check run at install, until resumed
    recent: deque[tuple[int, Any]] = field(default_factory=lambda: deque(maxlen=RECENT_KEPT))
    threads_left: int = 0  # runs in a row after which more threads ran than before
    error_types: dict[str, int] = field(default_factory=dict)  # errors by type, for the journal's aggregation
    reduce: str = "rank0"  # on a distributed job: how the ranks' values become the one written
    # Decided once, not per value: the tag, whether a float value goes straight to add_scalar, and how values of
    # the last type seen are written (`writer_for`, again only when the type changes).
    tag: str = field(init=False)
    floats: bool = field(init=False)
    _type: type | None = field(default=None, init=False, repr=False)
    _write: Write | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.tag = f"bidviz/{self.name}"
        self.floats = self.kind in ("auto", "scalar")

    def emit(self, writer: Any, value: Any, step: int) -> Any:
        """Write a value (not None) of this metric; what state.json shows of it."""
        if value.__class__ is not self._type:
            self._write, self._type = writer_for(self.kind, value), value.__class__
        return self._write(writer, self.tag, value, step)  # type: ignore[misc]

    @property
    def last_value(self) -> Any:
        return self.recent[-1][1] if self.recent else None

    @property
    def last_step(self) -> int | None:
        return self.recent[-1][0] if self.recent else None

    def record_value(self, step: int, shown: Any) -> None:
        self.errors_in_row = 0
        self.recent.append((step, shown))

    def record_error(self, info: dict[str, Any]) -> bool:
        """Count an error; True when the metric must now be disabled."""
        self.error_count += 1
        self.errors_in_row += 1
        self.last_error = info
        return info["type"] == "MetricTimeout" or self.errors_in_row >= ERRORS_TO_DISABLE

    def describe(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "every": self.every,
            "kind": self.kind,
            "status": self.status,
            "last_value": _jsonable(self.last_value),
            "last_step": self.last_step,
            "error_count": self.error_count,
            "errors_in_row": self.errors_in_row,
            "last_error": self.last_error,
            "first_error": self.first_error,
            "recent": [[s, _jsonable(v)] for s, v in list(self.recent)],
            "sender": self.sender,
            "reduce": self.reduce,
        }


def _jsonable(value: Any) -> Any:
    try:
        return to_json_value(value)
    except TypeError:
        return repr(value)[:200]


def make_function(code: types.CodeType, globals_: dict[str, Any]) -> Callable[[dict[str, Any]], Any]:
    fn = types.FunctionType(code, globals_, _FN_NAME)
    if code.co_kwonlyargcount:  # the prelude's way to the namespace
        fn.__kwdefaults__ = {_NS: globals_}
    return fn


# -- writing values ------------------------------------------------------------------------------------


def _is_array(value: Any) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype")


def emit(writer: Any, tag: str, value: Any, kind: str, step: int) -> Any:
    """Write one metric value as DESIGN.md's table says; return what state.json shows as its last value."""
    if value is None:
        return None
    return writer_for(kind, value)(writer, tag, value, step)


Write = Callable[[Any, str, Any, int], Any]  # (writer, tag, value, step) -> what state.json shows


def writer_for(kind: str, value: Any) -> Write:
    """How a value of `value`'s type is written under `kind`: decided once per type, not per value (a metric keeps
    the function until its value's type changes). TypeError when the kind cannot take such a value."""
    if kind == "auto":
        kind = _auto_kind(value)
        if kind in ("scalar", "histogram") and _is_array(value):
            return _write_array  # its ndim, not its type, decides between the two
    write = _WRITERS.get(kind)
    if write is None:
        raise ValueError(f"unknown metric kind {kind!r}")
    return write


def _write_scalar(writer: Any, tag: str, value: Any, step: int) -> float:
    x = scalar(value)
    writer.add_scalar(tag, x, step)
    return x


def _write_dict(writer: Any, tag: str, value: Any, step: int) -> dict[str, float]:
    if not isinstance(value, dict):
        raise TypeError(f"a dict metric needs a dict of str to number; got {type(value).__name__}")
    out = {}
    for k, v in value.items():
        out[_plain_str(str(k))] = x = scalar(v)
        writer.add_scalar(f"{tag}/{k}", x, step)
    return out


def _write_histogram(writer: Any, tag: str, value: Any, step: int) -> dict[str, Any]:
    arr = to_numpy(value)
    if arr.size == 0 or not _is_numeric(arr):
        raise TypeError(f"a histogram needs a non-empty numeric tensor/array; got {arr.dtype} of shape {arr.shape}")
    writer.add_histogram(tag, arr, step)
    return {"mean": float(arr.mean()), "min": float(arr.min()), "max": float(arr.max()), "n": int(arr.size)}


def _write_array(writer: Any, tag: str, value: Any, step: int) -> Any:
    if len(value.shape) == 0:
        return _write_scalar(writer, tag, value, step)
    return _write_histogram(writer, tag, value, step)


def _write_text(writer: Any, tag: str, value: Any, step: int) -> str:
    if not isinstance(value, str):
        raise TypeError(f"kind 'text' needs a str; got {type(value).__name__}")
    writer.add_text(tag, value, step)
    return _plain_str(value)[:200]


def _plain_str(text: str) -> str:
    """`text` as a plain str: what a metric returns is kept (`recent`) and shown (state, answers) outside its budget,
    where a str subclass's own methods (`__str__`, `__getitem__`, `__repr__`) must not run."""
    return str.__str__(text)


def _write_image(writer: Any, tag: str, value: Any, step: int) -> dict[str, Any]:
    arr = to_numpy(value)
    writer.add_image(tag, arr, step, dataformats=_image_format(arr))
    return {"shape": list(arr.shape)}


_WRITERS: dict[str, Write] = {
    "scalar": _write_scalar,
    "dict": _write_dict,
    "histogram": _write_histogram,
    "text": _write_text,
    "image": _write_image,
}


def _auto_kind(value: Any) -> str:
    if isinstance(value, (bool, numbers.Number)):
        return "scalar"
    if isinstance(value, str):
        return "text"
    if isinstance(value, dict):
        return "dict"
    if _is_array(value):
        return "scalar" if len(value.shape) == 0 else "histogram"
    raise TypeError(
        f"a metric must return a number, a dict of str to number, a tensor/array, a str or None; got "
        f"{type(value).__name__}"
    )


def _is_numeric(arr: Any) -> bool:
    return arr.dtype.kind in "biuf"


def scalar(value: Any) -> float:
    if _is_array(value):
        if int(math.prod(value.shape)) != 1:
            raise TypeError(f"a scalar needs one value; got a tensor/array of shape {tuple(value.shape)}")
        value = to_numpy(value).reshape(()).item()  # a TF tensor has neither reshape() nor item()
    if isinstance(value, bool) or isinstance(value, numbers.Real):
        return float(value)
    raise TypeError(f"a scalar must be a number; got {type(value).__name__}: {value!r}")


def _image_format(arr: Any) -> str:
    if arr.ndim == 2:
        return "HW"
    if arr.ndim == 3:
        if arr.shape[-1] in (1, 3, 4):
            return "HWC"
        if arr.shape[0] in (1, 3, 4):
            return "CHW"
    raise TypeError(
        f"an image needs a 2-D (H×W) or 3-D (H×W×C or C×H×W with C in 1, 3, 4) tensor/array; got shape {arr.shape}"
    )
