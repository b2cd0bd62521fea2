"""Hypothesis strategies of hostile command files: JSON-ish junk, wrong types in every field, huge and deep values,
lone surrogates, bytes that are not UTF-8, NaN/Infinity literals, non-ASCII signatures, bad file names, and
entries of the inbox that are not files at all."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from bidviz import protocol

SECRET = "proof-secret"
# Kinds a fuzzer may send validly: `stop` and `pause` would end or hold training, which the proof requires to go on.
SAFE_KINDS = ["set_hparam", "add_metric", "remove_metric", "pause_metric", "resume_metric", "eval", "resume"]
WRONG_KINDS = ["explode", "", "EVAL", " eval", "eval\n", "set-hparam", "stop ", "Stop"]


@dataclass(frozen=True)
class Raw:
    """JSON text put into a file as is: numbers JSON allows but Python refuses, literals that are not JSON."""

    text: str


def encode(obj: Any, ascii_only: bool = True) -> str:
    """JSON text of `obj`, where Raw parts go in verbatim and floats may be NaN/Infinity."""
    if isinstance(obj, Raw):
        return obj.text
    if isinstance(obj, dict):
        return (
            "{"
            + ",".join(f"{json.dumps(str(k), ensure_ascii=ascii_only)}:{encode(v, ascii_only)}" for k, v in obj.items())
            + "}"
        )
    if isinstance(obj, (list, tuple)):
        return "[" + ",".join(encode(v, ascii_only) for v in obj) + "]"
    if isinstance(obj, str):
        return json.dumps(obj, ensure_ascii=ascii_only)
    return json.dumps(obj)  # None, bool, int, float (NaN and Infinity as their non-JSON literals)


def to_bytes(text: str) -> bytes:
    """UTF-8, except that a lone surrogate becomes the 3 bytes a careless encoder writes (not valid UTF-8)."""
    return text.encode("utf-8", "surrogatepass")


def signed(obj: dict[str, Any], text: str) -> dict[str, Any]:
    """`obj` with the signature the bridge computes from the parsed text, when the text parses and can be signed."""
    try:
        parsed = json.loads(text)
        return {**obj, "sig": protocol.sign({k: v for k, v in parsed.items() if k != "sig"}, SECRET)}
    except Exception:  # noqa: BLE001 - not signable: the bridge refuses it before it would check a signature
        return obj


# -- values ------------------------------------------------------------------------------------------------------

SURROGATES = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
TEXT = st.text(alphabet=st.characters(exclude_categories=()) | SURROGATES, max_size=30)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**63 - 2, max_value=2**64 + 2)
    | st.floats(allow_nan=True, allow_infinity=True)
    | TEXT
)
JSONISH = st.recursive(
    SCALARS, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(TEXT, kids, max_size=4), max_leaves=12
)
HOSTILE_VALUES = st.one_of(
    JSONISH,
    st.sampled_from(
        [
            Raw("9" * 400),
            Raw("-" + "9" * 400),
            Raw("1" * 5000),  # past Python's 4300-digit limit for int()
            Raw("1e999"),
            Raw("-1e999"),
            Raw("NaN"),
            Raw("Infinity"),
            Raw("-Infinity"),
            Raw("[" * 5000 + "]" * 5000),
            Raw('{"a":' * 3000 + "1" + "}" * 3000),
            "\ud800",
            "a\udfffb",
            "x" * 100_001,
            "lr\n",
            "m\n",
            "",
            " ",
            "\x00",
            "\u202e",
            "\x1b[31mred",
            [1] * 17,
            [1e308, -1e308],
            {"": None},
        ]
    ),
)
NAMES = st.sampled_from(["lr", "mode", "batch", "nope", "lr\n", "../x", "a" * 129, "lr@1", "m", "fuzz_metric"]) | TEXT


def base_command(cid: str, draw: Any) -> tuple[dict[str, Any], str | None, frozenset[str] | None]:
    """A valid command: its dict, the id its eval appends to `applied` (or None), and the statuses expected."""
    choice = draw(st.integers(0, 9))
    args: dict[str, Any]
    marks: str | None = None
    expect: frozenset[str] | None = frozenset({"applied"})
    if choice <= 3:
        kind, args, marks = "eval", {"code": f"applied.append({cid!r})"}, cid
        if draw(st.booleans()):
            args["now"] = draw(st.booleans())
    elif choice <= 5:
        kind = "set_hparam"
        args = draw(
            st.sampled_from(
                [
                    {"name": "lr", "value": draw(st.floats(0, 1))},
                    {"name": "mode", "value": draw(st.sampled_from(["fast", "slow"]))},
                    {"name": "batch", "value": draw(st.integers(1, 256))},
                    {"values": {"lr": draw(st.floats(0, 1)), "batch": draw(st.integers(1, 256))}},
                ]
            )
        )
    elif choice == 6:
        kind, args = "add_metric", {"name": "fuzz_metric", "code": "loss", "every": 1000, "replace": True}
    elif choice == 7:
        kind, args, expect = "remove_metric", {"name": "ghost"}, frozenset({"rejected"})
    elif choice == 8:
        kind, args, expect = (
            "eval",
            {"code": draw(st.sampled_from(["1 +", "def f(:", "x = (1,\n"]))},
            frozenset({"rejected"}),
        )
    else:
        kind, args, expect = (
            "eval",
            {"code": draw(st.sampled_from(["1/0", "undefined_name", "raise SystemExit(3)"]))},
            frozenset({"failed"}),
        )
    obj = {"v": 1, "id": cid, "kind": kind, "args": args, "sender": "fuzz", "sent_at": time.time()}
    if draw(st.integers(0, 9)) == 0:
        past = draw(st.booleans())
        obj["expires_at"] = time.time() + (-60 if past else 600)
        if past:
            expect = frozenset({"rejected"})
    return obj, marks, expect


# -- cases -------------------------------------------------------------------------------------------------------


class Case:
    """One entry dropped into the inbox. (Not a dataclass: Hypothesis would print a huge one in full.)"""

    __slots__ = ("name", "shape", "data", "expect", "marks", "why")

    def __init__(
        self, name: bytes, shape: str, data: bytes, expect: frozenset[str] | None, marks: str | None, why: str
    ) -> None:
        self.name = name  # its file name, as bytes (a name need not be UTF-8)
        self.shape = shape  # file (tmp + rename), direct (written in place, in two parts), dir, symlink, fifo, foreign
        self.data = data
        self.expect = expect  # the statuses allowed; None: any
        self.marks = marks  # the id its eval appends to `applied` if it runs (a mutated one may run other code)
        self.why = why

    def __repr__(self) -> str:
        data = self.data if len(self.data) <= 120 else self.data[:100] + b"... (%d bytes)" % len(self.data)
        expect = sorted(self.expect) if self.expect is not None else "any"
        return f"Case({self.why!r}, {self.shape}, name={self.name!r}, data={data!r}, expect={expect})"

    @property
    def rid(self) -> str:
        """The id its response must carry."""
        return protocol.id_from_filename(os.fsdecode(self.name))


def good_name(cid: str, offset_ms: int = 0) -> bytes:
    return protocol.inbox_name(cid, time.time() + offset_ms / 1000).encode()


BAD_NAMES = st.one_of(
    st.text(
        alphabet=st.characters(exclude_characters="/\x00", exclude_categories=("Cs",)), min_size=1, max_size=60
    ).map(lambda s: s.encode("utf-8")),
    st.binary(min_size=1, max_size=60).filter(lambda b: b"/" not in b and b"\x00" not in b),
    st.builds(
        lambda cid, how: {
            "newline": good_name(cid) + b"\n",
            "upper": good_name(cid).upper(),
            "long_ms": b"12345678901234567-" + cid.encode() + b".json",
            "no_ext": good_name(cid)[:-5],
            "short_id": good_name(cid).replace(cid.encode(), cid[:31].encode()),
            "space": b" " + good_name(cid),
            "double_ext": good_name(cid) + b".json",
            "utf8_digits": "١٢٣-".encode() + cid.encode() + b".json",
        }[how],
        st.uuids().map(lambda u: u.hex),
        st.sampled_from(["newline", "upper", "long_ms", "no_ext", "short_id", "space", "double_ext", "utf8_digits"]),
    ),
).filter(lambda b: not b.startswith(b".") and len(b) <= 255)

RAW_BYTES = st.one_of(
    st.binary(max_size=200),
    st.sampled_from(
        [
            b"",
            b" \n",
            b"null",
            b"[]",
            b"7",
            b'"v"',
            b"[" * 100_000,
            b"{" * 100_000,
            b'{"a":' * 50_000,
            b"[" * 5000 + b"]" * 5000,
            b"\xff\xfe\x00",
            b"\xef\xbb\xbf{}",
            '{"v": 1}'.encode("utf-16"),
            b"NaN",
            b'{"v": NaN}',
            b'{"v": 1' + b"0" * 400 + b"}",
            b'{"v": ' + b"1" * 5000 + b"}",
            b'{"v": 1e999}',
            b'{"v": 1, "v": 1}',
            b'{"\xed\xa0\x80": 1}',
        ]
    ),
)

FIELDS = ["v", "id", "kind", "args", "sender", "sent_at", "expires_at", "sig", "args.*", "extra", "delete"]


@st.composite
def cases(draw: Any) -> Case:
    """One hostile (or, now and then, valid) inbox entry."""
    cid = draw(st.uuids()).hex
    what = draw(st.integers(0, 99))
    obj, marks, expect = base_command(cid, draw)
    if what < 25:  # valid and signed
        text = encode(obj)
        return Case(good_name(cid), "file", to_bytes(encode(signed(obj, text))), expect, marks, "valid")
    if what < 60:  # a valid command with hostile fields
        for _ in range(draw(st.integers(1, 3))):
            field = draw(st.sampled_from(FIELDS))
            value = draw(HOSTILE_VALUES)
            if field == "kind":
                value = draw(st.sampled_from(SAFE_KINDS + WRONG_KINDS) | st.just(value))
            if field == "args.*":
                args = obj["args"] if isinstance(obj.get("args"), dict) else {}
                key = draw(st.sampled_from(["code", "name", "value", "values", "now", "every", "kind", "replace"]))
                obj["args"] = {**args, key: value if key != "name" else draw(NAMES | st.just(value))}
            elif field == "extra":
                obj[draw(TEXT)] = value
            elif field == "delete":
                obj.pop(draw(st.sampled_from(sorted(obj))), None)
            else:
                obj[field] = value
        ascii_only = draw(st.booleans())
        text = encode(obj, ascii_only)
        if draw(st.integers(0, 4)):
            text = encode(signed(obj, text), ascii_only)
        else:  # no, a wrong, a non-ASCII or a non-string signature
            sig = draw(st.sampled_from([None, "0" * 64, "é" * 64, "\ud800", 7, ["a"]]))
            text = encode({**obj, "sig": sig} if sig is not None else obj, ascii_only)
        return Case(good_name(cid), "file", to_bytes(text), None, marks, "mutated")
    if what < 75:  # bytes that are no command at all
        return Case(good_name(cid), "file", draw(RAW_BYTES), frozenset({"rejected"}), None, "raw")
    if what < 85:  # a badly named file (its content valid)
        data = to_bytes(encode(signed(obj, encode(obj))))
        return Case(draw(BAD_NAMES), "file", data, frozenset({"rejected"}), None, "bad name")
    shape = draw(st.sampled_from(["direct", "dir", "symlink", "fifo", "foreign", "oversized", "empty"]))
    name = good_name(cid) if draw(st.integers(0, 3)) else draw(BAD_NAMES)
    data = to_bytes(encode(signed(obj, encode(obj))))
    if shape == "direct":  # written in place (no tmp + rename): the bridge may see half of it
        return Case(name, "direct", data, None, marks, "written in place")
    if shape == "oversized":
        data = data[:-1] + b', "pad": "' + b"x" * (protocol.MAX_COMMAND_BYTES + draw(st.integers(0, 1000))) + b'"}'
        return Case(name, "file", data, frozenset({"rejected"}), None, "oversized")
    if shape == "empty":
        return Case(name, "file", b"", frozenset({"rejected"}), None, "empty")
    return Case(name, shape, data, frozenset({"rejected"}), None, shape)


def duplicate(cid: str, offset_ms: int) -> Case:
    """A second file with an id already sent: valid, signed, and its eval would append the id a second time."""
    obj = {"v": 1, "id": cid, "kind": "eval", "args": {"code": f"applied.append({cid!r})"}, "sender": "dup"}
    obj["sent_at"] = time.time()
    return Case(good_name(cid, offset_ms), "file", to_bytes(encode(signed(obj, encode(obj)))), None, cid, "duplicate")
