"""The grammar a schema compiles to: a graph of small nodes (by index, so that `$ref`
recursion is just an edge back), and the tables the automaton reads for each.

Texts are UTF-8 bytes spelled as latin-1 characters, as the automaton reads them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .formats import NumberBounds


def spell(value: Any) -> str:
    """A JSON value as the automaton's text: compact JSON, UTF-8 bytes as latin-1 chars."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8").decode("latin-1")


@dataclass(frozen=True)
class Union:
    alts: tuple[int, ...]


@dataclass(frozen=True)
class Literal:
    texts: tuple[str, ...]                      # each value's spelling


@dataclass(frozen=True)
class String:
    min_len: int = 0
    max_len: int | None = None
    key: bool = False                           # a free object key (additionalProperties)
    exclude: frozenset | None = None            # a free key's spellings already taken by properties


@dataclass(frozen=True)
class Format:
    name: str                                   # a key of formats.PATTERNS


@dataclass(frozen=True)
class Number:
    integer: bool = False
    bounds: NumberBounds | None = None          # None: any number (exponents allowed)


@dataclass(frozen=True)
class Object:
    props: tuple[tuple[str, int, bool], ...] = ()   # (key spelled with quotes, value node, required)
    extra: int | None = None                    # node of additional properties' values; None: none


@dataclass(frozen=True)
class Array:
    prefix: tuple[int, ...] = ()
    items: int | None = None                    # node of the items after the prefix; None: none
    min_items: int = 0
    max_items: int | None = None

    def item(self, n: int) -> int | None:
        """The node of item n (0-based), or None when there may be no item n."""
        if self.max_items is not None and n >= self.max_items:
            return None
        return self.prefix[n] if n < len(self.prefix) else self.items

    def cap(self) -> int:
        """Counts at or past this behave alike (the state keeps min(count, cap))."""
        return self.max_items if self.max_items is not None else max(self.min_items, len(self.prefix))


@dataclass(frozen=True)
class Slot:
    """A $ref target being compiled (replaced when it is done)."""
    pointer: str


Node = Union | Literal | String | Format | Number | Object | Array | Slot


@dataclass
class Grammar:
    nodes: list[Node]
    root: int
    any: int                                    # the node of any JSON value
    keys: dict[int, list] = field(default_factory=dict)     # Object node -> per index i: (key alts, free keys ok)
    key_node: dict[int, int] = field(default_factory=dict)  # Object node -> String node of its free keys
    open_from: dict[int, list] = field(default_factory=dict)  # Object node -> per i: may '}' close now
    more_from: dict[int, list] = field(default_factory=dict)  # Object node -> per i: may ',' add one
    firsts: list[str] = field(default_factory=list)         # node -> characters its values start with

    def __post_init__(self):
        for i, n in enumerate(list(self.nodes)):
            if isinstance(n, Object):
                self._object_tables(i, n)
        self.firsts = self._first_chars()

    def _object_tables(self, i: int, n: Object) -> None:
        count = len(n.props)
        taken = frozenset(key[1:-1] for key, _, _ in n.props)
        if n.extra is not None:
            self.key_node[i] = len(self.nodes)
            self.nodes.append(String(key=True, exclude=taken or None))
        keys, open_, more = [], [], []
        for at in range(count + 1):
            alts = []
            for k in range(at, count):
                alts.append((n.props[k][0][1:], k))     # after the opening quote
                if n.props[k][2]:
                    break                               # a required property cannot be skipped
            required_left = any(req for _, _, req in n.props[at:])
            keys.append((tuple(alts), n.extra is not None and not required_left))
            open_.append(not required_left)
            more.append(bool(alts) or (n.extra is not None and not required_left))
        self.keys[i], self.open_from[i], self.more_from[i] = keys, open_, more

    def _first_chars(self) -> list[str]:
        """Per node, the characters its values start with (unions: a fixpoint, since they
        may refer to themselves through $ref)."""
        out = []
        for n in self.nodes:
            if isinstance(n, Literal):
                out.append("".join(sorted({t[0] for t in n.texts})))
            elif isinstance(n, (String, Format)):
                out.append('"')
            elif isinstance(n, Number):
                lead = "-0123456789"
                out.append("".join(c for c in lead if n.bounds.viable(c)) if n.bounds is not None else lead)
            else:
                out.append("{" if isinstance(n, Object) else "[" if isinstance(n, Array) else "")
        unions = [(i, n) for i, n in enumerate(self.nodes) if isinstance(n, Union)]
        changed = True
        while changed:
            changed = False
            for i, n in unions:
                chars = "".join(sorted(set(out[i]).union(*(out[a] for a in n.alts))))
                if chars != out[i]:
                    out[i], changed = chars, True
        return out
