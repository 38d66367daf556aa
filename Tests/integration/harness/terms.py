"""Erlang terms: quoting (Python -> Erlang source) and the external term format (Erlang -> Python)."""
from __future__ import annotations

import struct
import zlib
from typing import Any


def atom(s: str) -> str:
    """Erlang source for the atom s."""
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def binary(s: str | bytes) -> str:
    """Erlang source for the binary s (UTF-8)."""
    if isinstance(s, bytes):
        return "<<" + ",".join(str(b) for b in s) + ">>"
    return '<<"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"/utf8>>'


class Atom(str):
    """An Erlang atom (true and false decode to Python booleans)."""

    def __repr__(self) -> str:
        return f"Atom({str.__repr__(self)})"


class Opaque:
    """A pid, port, reference or fun; compared by its encoding."""

    def __init__(self, kind: str, node: str, raw: bytes):
        self.kind, self.node, self.raw = kind, node, raw

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Opaque) and (self.kind, self.raw) == (other.kind, other.raw)

    def __hash__(self) -> int:
        return hash((self.kind, self.raw))

    def __repr__(self) -> str:
        return f"<{self.kind} {self.node}>"


class ImproperList(list):
    def __init__(self, items, tail):
        super().__init__(items)
        self.tail = tail


def _hashable(v):
    return tuple(_hashable(x) for x in v) if isinstance(v, list) else v


def binary_to_term(data: bytes) -> Any:
    if not data or data[0] != 131:
        raise ValueError("not an external term")
    v, pos = _decode(data, 1)
    return v


_BOOLS = {"true": True, "false": False}


def _atom(name: str) -> Any:
    return _BOOLS[name] if name in _BOOLS else Atom(name)


def _decode(d: bytes, p: int) -> tuple[Any, int]:
    tag = d[p]
    p += 1
    if tag == 97:  # SMALL_INTEGER_EXT
        return d[p], p + 1
    if tag == 98:  # INTEGER_EXT
        return struct.unpack(">i", d[p:p + 4])[0], p + 4
    if tag == 70:  # NEW_FLOAT_EXT
        return struct.unpack(">d", d[p:p + 8])[0], p + 8
    if tag in (110, 111):  # SMALL_BIG_EXT, LARGE_BIG_EXT
        if tag == 110:
            n, p = d[p], p + 1
        else:
            n, p = struct.unpack(">I", d[p:p + 4])[0], p + 4
        sign = d[p]
        v = int.from_bytes(d[p + 1:p + 1 + n], "little")
        return (-v if sign else v), p + 1 + n
    if tag in (100, 118):  # ATOM_EXT, ATOM_UTF8_EXT
        n = struct.unpack(">H", d[p:p + 2])[0]
        return _atom(d[p + 2:p + 2 + n].decode("utf-8")), p + 2 + n
    if tag in (115, 119):  # SMALL_ATOM_EXT, SMALL_ATOM_UTF8_EXT
        n = d[p]
        return _atom(d[p + 1:p + 1 + n].decode("utf-8")), p + 1 + n
    if tag in (104, 105):  # SMALL_TUPLE_EXT, LARGE_TUPLE_EXT
        if tag == 104:
            n, p = d[p], p + 1
        else:
            n, p = struct.unpack(">I", d[p:p + 4])[0], p + 4
        items = []
        for _ in range(n):
            v, p = _decode(d, p)
            items.append(v)
        return tuple(items), p
    if tag == 106:  # NIL_EXT
        return [], p
    if tag == 107:  # STRING_EXT: a list of small integers
        n = struct.unpack(">H", d[p:p + 2])[0]
        return list(d[p + 2:p + 2 + n]), p + 2 + n
    if tag == 108:  # LIST_EXT
        n = struct.unpack(">I", d[p:p + 4])[0]
        p += 4
        items = []
        for _ in range(n):
            v, p = _decode(d, p)
            items.append(v)
        t, p = _decode(d, p)
        return (items if t == [] else ImproperList(items, t)), p
    if tag == 109:  # BINARY_EXT
        n = struct.unpack(">I", d[p:p + 4])[0]
        return d[p + 4:p + 4 + n], p + 4 + n
    if tag == 77:  # BIT_BINARY_EXT
        n = struct.unpack(">I", d[p:p + 4])[0]
        return d[p + 5:p + 5 + n], p + 5 + n
    if tag == 116:  # MAP_EXT
        n = struct.unpack(">I", d[p:p + 4])[0]
        p += 4
        m = {}
        for _ in range(n):
            k, p = _decode(d, p)
            v, p = _decode(d, p)
            m[_hashable(k)] = v
        return m, p
    if tag in (88, 103):  # NEW_PID_EXT, PID_EXT
        start = p
        node, p = _decode(d, p)
        p += 12 if tag == 88 else 9
        return Opaque("pid", node, d[start:p]), p
    if tag in (89, 102, 120):  # NEW_PORT_EXT, PORT_EXT, V4_PORT_EXT
        start = p
        node, p = _decode(d, p)
        p += {89: 8, 102: 5, 120: 12}[tag]
        return Opaque("port", node, d[start:p]), p
    if tag in (90, 114):  # NEWER_REFERENCE_EXT, NEW_REFERENCE_EXT
        n = struct.unpack(">H", d[p:p + 2])[0]
        start = p
        node, p = _decode(d, p + 2)
        p += (4 if tag == 90 else 1) + 4 * n
        return Opaque("ref", node, d[start:p]), p
    if tag == 112:  # NEW_FUN_EXT
        size = struct.unpack(">I", d[p:p + 4])[0]
        return Opaque("fun", "", d[p:p + size]), p + size
    if tag == 113:  # EXPORT_EXT
        start = p
        for _ in range(3):
            _, p = _decode(d, p)
        return Opaque("fun", "", d[start:p]), p
    if tag == 80:  # compressed
        size = struct.unpack(">I", d[p:p + 4])[0]
        inner = zlib.decompress(d[p + 4:])
        assert len(inner) == size
        v, _ = _decode(inner, 0)
        return v, len(d)
    raise ValueError(f"unsupported external term tag {tag}")


def proplist(v: Any) -> dict:
    """[{K, V}, ...] (or a map) -> dict."""
    if isinstance(v, dict):
        return v
    return {t[0]: t[1] for t in v if isinstance(t, tuple) and len(t) == 2}
