"""JSON Schema -> a `Grammar`: a graph of small nodes the automaton (automaton.py) walks.

    g = compile_schema({"type": "object", "properties": {"name": {"type": "string"}},
                        "required": ["name"], "additionalProperties": False})

Supported: `type` (object, array, string, number, integer, boolean, null, or a list of
them), `properties`, `required`, `additionalProperties` (false, true or a schema), `enum`,
`const`, `items`, `prefixItems` (and draft-7 array `items` / `additionalItems`),
`minItems`, `maxItems`, `anyOf`, `oneOf` (generated as anyOf: alternatives that overlap
are not told apart), `allOf` (merged), `$ref` to `#` / `#/$defs/...` / any local pointer
(recursion included), `minLength`, `maxLength`, `minimum`, `maximum`, `exclusiveMinimum`,
`exclusiveMaximum`, and `format` date, time, date-time and uuid. Annotations (`title`,
`description`, `default`, `examples`, `x-...`) are ignored. Any other keyword is a
`SchemaError` naming it and where it is: a reply is never left silently unconstrained.

The output is a subset of what the schema accepts, chosen so that generation always ends
well: properties come in the schema's order (as OpenAI's strict mode writes them); an
object with `properties` and no `additionalProperties` gets only those properties; a
schema without `type` gets the types its keywords speak of; numbers have bounded digits.
"""
from __future__ import annotations

import json
import math
from fractions import Fraction
from typing import Any

from .formats import PATTERNS, NumberBounds, format_regex
from .grammar import Array, Format, Grammar, Literal, Node, Number, Object, Slot, String, Union, spell

ANNOTATIONS = {"title", "description", "default", "examples", "$comment", "$schema", "$id", "deprecated",
               "readOnly", "writeOnly", "$defs", "definitions", "$anchor"}
OBJECT_KW = {"properties", "required", "additionalProperties"}
ARRAY_KW = {"items", "prefixItems", "minItems", "maxItems", "additionalItems", "uniqueItems"}
STRING_KW = {"minLength", "maxLength", "format"}
NUMBER_KW = {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}
GENERIC_KW = {"type", "enum", "const", "anyOf", "oneOf", "allOf", "$ref"}
KNOWN = ANNOTATIONS | OBJECT_KW | ARRAY_KW | STRING_KW | NUMBER_KW | GENERIC_KW
TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")
MAX_NODES = 20000           # a schema this large is a mistake or an attack
MAX_DEPTH = 64              # nesting of subschemas (recursion through $ref does not count)


class SchemaError(ValueError):
    """A schema this compiler cannot honour: the message names the keyword and where it is
    (a JSON pointer, '#' being the schema's root)."""


# -- the compiler -------------------------------------------------------------------------------

def _pointer(path: str, *parts: Any) -> str:
    for p in parts:
        path += "/" + str(p).replace("~", "~0").replace("/", "~1")
    return path


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "integer" if v.is_integer() else "number"
    return {str: "string", list: "array", dict: "object"}[type(v)]


class _Compiler:
    def __init__(self, root: Any):
        self.root = root
        self.nodes: list[Node] = []
        self.interned: dict[Node, int] = {}
        self.refs: dict[str, int] = {}          # pointer -> node id (its Slot while compiling)
        self.depth = 0
        self.any = self._any()

    def add(self, node: Node) -> int:
        if isinstance(node, Slot):
            self.nodes.append(node)
            return len(self.nodes) - 1
        got = self.interned.get(node)
        if got is None:
            if len(self.nodes) >= MAX_NODES:
                raise SchemaError(f"the schema is too large (more than {MAX_NODES} parts)")
            got = self.interned[node] = len(self.nodes)
            self.nodes.append(node)
        return got

    def _any(self) -> int:
        slot = self.add(Slot("any"))
        obj = self.add(Object(extra=slot))
        arr = self.add(Array(items=slot))
        lits = self.add(Literal(("true", "false", "null")))
        self.nodes[slot] = Union((obj, arr, self.add(String()), self.add(Number()), lits))
        return slot

    # -- one subschema ---------------------------------------------------------------------

    def compile(self, s: Any, path: str) -> int:
        if isinstance(s, bool):
            if not s:
                raise SchemaError(f"{path}: the schema false allows no value")
            return self.any
        if not isinstance(s, dict):
            raise SchemaError(f"{path}: a schema must be an object or a boolean, not {_json_type(s)}")
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise SchemaError(f"{path}: the schema nests deeper than {MAX_DEPTH} levels")
            return self._compile(s, path)
        finally:
            self.depth -= 1

    def _compile(self, s: dict, path: str) -> int:
        for k in s:
            if k not in KNOWN and not (isinstance(k, str) and k.startswith("x-")):
                raise SchemaError(f"{path}: keyword '{k}' is not supported")
        rules = {k for k in s if k in KNOWN - ANNOTATIONS}
        if "$ref" in s:
            if rules - {"$ref"}:
                raise SchemaError(f"{path}: '$ref' beside '{sorted(rules - {'$ref'})[0]}' is not supported "
                                  f"(put them together in 'allOf')")
            return self.ref(s["$ref"], path)
        if "allOf" in s:
            parts = s["allOf"]
            if not isinstance(parts, list) or not parts:
                raise SchemaError(f"{path}/allOf: expected a non-empty array of schemas")
            merged = {k: v for k, v in s.items() if k != "allOf"}
            for i, part in enumerate(parts):
                merged = _merge(merged, self.resolve(part, _pointer(path, "allOf", i)), _pointer(path, "allOf", i))
            return self.compile(merged, path)
        if "anyOf" in s or "oneOf" in s:
            return self._union(s, rules, path)
        if "enum" in s or "const" in s:
            return self._literal(s, path)
        types = s.get("type")
        if types is None:
            types = [t for t, kws in (("object", OBJECT_KW), ("array", ARRAY_KW), ("string", STRING_KW),
                                      ("number", NUMBER_KW)) if kws & rules]
            if not types:
                return self.any
        elif isinstance(types, str):
            types = [types]
        if not isinstance(types, list) or not types or not all(t in TYPES for t in types):
            raise SchemaError(f"{path}/type: expected one of {', '.join(TYPES)} or a list of them, "
                              f"got {json.dumps(s.get('type'))}")
        if "number" in types and "integer" in types:
            types = [t for t in types if t != "integer"]
        alts = [self._typed(t, s, path) for t in dict.fromkeys(types)]
        return alts[0] if len(alts) == 1 else self.add(Union(tuple(dict.fromkeys(alts))))

    def _union(self, s: dict, rules: set, path: str) -> int:
        if "anyOf" in s and "oneOf" in s:
            raise SchemaError(f"{path}: 'anyOf' together with 'oneOf' is not supported")
        key = "anyOf" if "anyOf" in s else "oneOf"
        options = s[key]
        if not isinstance(options, list) or not options:
            raise SchemaError(f"{path}/{key}: expected a non-empty array of schemas")
        siblings = {k: v for k, v in s.items() if k in rules and k != key}
        alts = []
        for i, opt in enumerate(options):
            where = _pointer(path, key, i)
            if siblings:
                opt = _merge(dict(siblings), self.resolve(opt, where), where)
            alts.append(self.compile(opt, where))
        alts = list(dict.fromkeys(alts))
        return alts[0] if len(alts) == 1 else self.add(Union(tuple(alts)))

    def _literal(self, s: dict, path: str) -> int:
        if "const" in s:
            values, where = [s["const"]], path + "/const"
        else:
            values, where = s["enum"], path + "/enum"
            if not isinstance(values, list) or not values:
                raise SchemaError(f"{where}: expected a non-empty array")
        rest = {k: v for k, v in s.items() if k not in ("enum", "const")}
        kept = [v for v in values if _value_fits(v, rest, where)]
        if not kept:
            raise SchemaError(f"{where}: no value fits the schema's other keywords")
        return self.add(Literal(tuple(dict.fromkeys(spell(v) for v in kept))))

    def _typed(self, t: str, s: dict, path: str) -> int:
        if t == "null":
            return self.add(Literal(("null",)))
        if t == "boolean":
            return self.add(Literal(("true", "false")))
        if t in ("number", "integer"):
            return self.add(Number(t == "integer", _bounds(s, t == "integer", path)))
        if t == "string":
            return self._string(s, path)
        if t == "array":
            return self._array(s, path)
        return self._object(s, path)

    def _string(self, s: dict, path: str) -> int:
        lo, hi = _count(s, "minLength", path), _count(s, "maxLength", path, None)
        if hi is not None and hi < lo:
            raise SchemaError(f"{path}: maxLength {hi} is below minLength {lo}")
        fmt = s.get("format")
        if fmt is None:
            return self.add(String(lo, hi))
        if fmt not in PATTERNS:
            raise SchemaError(f"{path}/format: format {json.dumps(fmt)} is not supported "
                              f"(supported: {', '.join(PATTERNS)})")
        if lo or hi is not None:
            raise SchemaError(f"{path}: 'format' together with minLength/maxLength is not supported")
        format_regex(fmt)
        return self.add(Format(fmt))

    def _array(self, s: dict, path: str) -> int:
        lo, hi = _count(s, "minItems", path), _count(s, "maxItems", path, None)
        if hi is not None and hi < lo:
            raise SchemaError(f"{path}: maxItems {hi} is below minItems {lo}")
        if s.get("uniqueItems") not in (None, False):
            raise SchemaError(f"{path}: keyword 'uniqueItems' is not supported")
        items, prefix_key, rest_key = s.get("items", True), "prefixItems", "items"
        prefix = s.get("prefixItems", [])
        if isinstance(items, list):                     # draft 7: items as a list, then additionalItems
            prefix, items, prefix_key, rest_key = items, s.get("additionalItems", True), "items", "additionalItems"
        elif "additionalItems" in s:
            raise SchemaError(f"{path}: 'additionalItems' needs 'items' as an array")
        if not isinstance(prefix, list):
            raise SchemaError(f"{path}/{prefix_key}: expected an array of schemas")
        pre = tuple(self.compile(p, _pointer(path, prefix_key, i)) for i, p in enumerate(prefix))
        more = None if items is False else self.compile(items, path + "/" + rest_key)
        if more is None and lo > len(pre):
            raise SchemaError(f"{path}: minItems {lo} needs more items than the {len(pre)} allowed")
        return self.add(Array(pre, more, lo, hi))

    def _object(self, s: dict, path: str) -> int:
        props = s.get("properties", {})
        if not isinstance(props, dict):
            raise SchemaError(f"{path}/properties: expected an object mapping names to schemas")
        required = s.get("required", [])
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise SchemaError(f"{path}/required: expected an array of property names")
        missing = [r for r in required if r not in props]
        if missing:
            raise SchemaError(f"{path}/required: '{missing[0]}' is not among the properties")
        extra = s.get("additionalProperties", "properties" not in s)
        if not isinstance(extra, (bool, dict)):
            raise SchemaError(f"{path}/additionalProperties: expected a boolean or a schema")
        out = tuple((spell(name), self.compile(sub, _pointer(path, "properties", name)), name in required)
                    for name, sub in props.items())
        extra_node = None if extra is False else self.compile(extra, path + "/additionalProperties")
        return self.add(Object(out, extra_node))

    # -- references ------------------------------------------------------------------------

    def target(self, ref: Any, path: str) -> Any:
        if not isinstance(ref, str) or not (ref == "#" or ref.startswith("#/")):
            raise SchemaError(f"{path}/$ref: only references inside the schema ('#', '#/$defs/Name') are "
                              f"supported, got {json.dumps(ref)}")
        node = self.root
        for part in ref[2:].split("/") if ref != "#" else ():
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise SchemaError(f"{path}/$ref: {ref} points at nothing")
        return node

    def ref(self, ref: str, path: str) -> int:
        if ref in self.refs:
            return self.refs[ref]
        slot = self.refs[ref] = self.add(Slot(ref))
        got = self.compile(self.target(ref, path), ref)
        if got == slot:
            raise SchemaError(f"{path}/$ref: {ref} refers to itself and nothing else")
        self.nodes[slot] = self.nodes[got]             # same node under two ids: both stay valid
        return slot

    def resolve(self, s: Any, path: str, hops: int = 0) -> Any:
        """A subschema with a lone $ref replaced by what it points at (for merging)."""
        if isinstance(s, dict) and "$ref" in s and hops < MAX_DEPTH:
            rest = {k: v for k, v in s.items() if k != "$ref" and k not in ANNOTATIONS}
            if not rest:
                return self.resolve(self.target(s["$ref"], path), s["$ref"], hops + 1)
        if s is True:
            return {}
        return s


def _count(s: dict, key: str, path: str, default: int | None = 0) -> int | None:
    v = s.get(key, default)
    if v is default:
        return v
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise SchemaError(f"{path}/{key}: expected an integer >= 0, got {json.dumps(v)}")
    return v


def _bounds(s: dict, integer: bool, path: str) -> NumberBounds | None:
    vals = {}
    for key in NUMBER_KW:
        if key in s:
            v = s[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise SchemaError(f"{path}/{key}: expected a number, got {json.dumps(v)}")
            vals[key] = Fraction(v)
    if not vals:
        return None
    lo, lo_open = vals.get("minimum"), False
    if "exclusiveMinimum" in vals and (lo is None or vals["exclusiveMinimum"] >= lo):
        lo, lo_open = vals["exclusiveMinimum"], True
    hi, hi_open = vals.get("maximum"), False
    if "exclusiveMaximum" in vals and (hi is None or vals["exclusiveMaximum"] <= hi):
        hi, hi_open = vals["exclusiveMaximum"], True
    b = NumberBounds(lo, lo_open, hi, hi_open, integer)
    if b.empty():
        raise SchemaError(f"{path}: no {'integer' if integer else 'number'} lies between the bounds")
    return b


def _merge(a: dict, b: Any, path: str) -> dict:
    """Two schemas both must hold, as one (allOf, or anyOf's siblings): keywords that
    combine (properties, required, bounds, types) are combined, equal ones kept, and a
    conflict is a SchemaError."""
    if b is True or b == {}:
        return dict(a)
    if not isinstance(b, dict):
        raise SchemaError(f"{path}: a schema must be an object or a boolean")
    out = dict(a)
    for k, v in b.items():
        if k == "additionalProperties" or k not in out or k in ANNOTATIONS or out[k] == v:
            out.setdefault(k, v)
        elif k == "properties":
            props = dict(out[k])
            for name, sub in v.items():
                props[name] = {"allOf": [props[name], sub]} if name in props else sub
            out[k] = props
        elif k == "required":
            out[k] = list(dict.fromkeys(out[k] + v))
        elif k in ("minimum", "exclusiveMinimum", "minLength", "minItems"):
            out[k] = max(out[k], v)
        elif k in ("maximum", "exclusiveMaximum", "maxLength", "maxItems"):
            out[k] = min(out[k], v)
        elif k == "type":
            x = {out[k]} if isinstance(out[k], str) else set(out[k])
            y = {v} if isinstance(v, str) else set(v)
            if ("number" in x and "integer" in y) or ("integer" in x and "number" in y):
                x |= {"integer"}
                y |= {"integer"}
            both = [t for t in TYPES if t in x & y]
            if not both:
                raise SchemaError(f"{path}: the types {sorted(x)} and {sorted(y)} have nothing in common")
            out[k] = both if len(both) > 1 else both[0]
        elif k == "enum":
            out[k] = [x for x in out[k] if x in v]
        else:
            raise SchemaError(f"{path}: '{k}' differs between schemas that must both hold; merging them "
                              f"is not supported")
    return _merge_extra(a, b, out, path)


def _merge_extra(a: dict, b: dict, out: dict, path: str) -> dict:
    """additionalProperties speaks only of its own schema's properties: a part that allows
    no others limits the merged object to its own names (a name only another part
    declares becomes forbidden); a part whose others must follow a schema is merged only
    when the other part declares nothing beyond it."""
    names = set(out.get("properties", {}))
    for part, other in ((a, b), (b, a)):
        extra = part.get("additionalProperties", True)
        own = set(part.get("properties", {}))
        if extra is False:
            names &= own
        elif extra is not True and set(other.get("properties", {})) - own:
            raise SchemaError(f"{path}: merging an 'additionalProperties' schema with properties it does "
                              f"not declare is not supported")
    if "additionalProperties" not in a and "additionalProperties" not in b:
        return out
    if a.get("additionalProperties") is False or b.get("additionalProperties") is False:
        dropped = [r for r in out.get("required", []) if r not in names]
        if dropped:
            raise SchemaError(f"{path}: '{dropped[0]}' is required, but 'additionalProperties': false in "
                              f"another part forbids it")
        out["properties"] = {k: v for k, v in out.get("properties", {}).items() if k in names}
        out["additionalProperties"] = False
    elif "additionalProperties" in a and "additionalProperties" in b and a["additionalProperties"] != \
            b["additionalProperties"]:
        out["additionalProperties"] = {"allOf": [a["additionalProperties"], b["additionalProperties"]]}
    return out


def _value_fits(v: Any, s: dict, path: str) -> bool:
    """Does an enum/const value satisfy the other keywords of its schema?"""
    t = _json_type(v)
    types = s.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else types
        if t not in types and not (t == "integer" and "number" in types):
            return False
    if t == "string":
        if len(v) < s.get("minLength", 0) or len(v) > s.get("maxLength", len(v)):
            return False
        fmt = s.get("format")
        if fmt is not None and (fmt not in PATTERNS or not format_regex(fmt).fullmatch(v)):
            return False
    if t in ("integer", "number"):
        b = _bounds(s, False, path)
        if b is not None and not b.contains(Fraction(v)):
            return False
    return True


def compile_schema(schema: Any) -> Grammar:
    """A schema (a parsed JSON object, or a boolean) as a Grammar; SchemaError if it uses
    what is not supported or allows no value."""
    c = _Compiler(schema)
    root = c.compile(schema, "#")
    return _finish(c, root)


def object_grammar() -> Grammar:
    """JSON mode (`response_format: json_object`): any JSON object."""
    return compile_schema({"type": "object"})


def _finish(c: _Compiler, root: int) -> Grammar:
    """Check every node can produce a finite value, drop alternatives that cannot (the
    model would never get out of them), and build the tables."""
    nodes = c.nodes
    good = [False] * len(nodes)
    changed = True
    while changed:                                  # least fixpoint of "has a finite instance"
        changed = False
        for i, n in enumerate(nodes):
            if good[i]:
                continue
            if isinstance(n, Union):
                ok = any(good[a] for a in n.alts)
            elif isinstance(n, Object):
                ok = all(good[v] for _, v, req in n.props if req)
            elif isinstance(n, Array):
                ok = all(good[p] for p in n.prefix[:n.min_items]) and \
                    (n.min_items <= len(n.prefix) or (n.items is not None and good[n.items]))
            else:
                ok = not isinstance(n, Slot)
            if ok:
                good[i] = changed = True
    if not good[root]:
        raise SchemaError("#: the schema has no finite instance (a required recursion never ends)")
    for i, n in enumerate(nodes):
        if isinstance(n, Union):
            nodes[i] = Union(tuple(a for a in n.alts if good[a]))
        elif isinstance(n, Object):
            nodes[i] = Object(tuple(p for p in n.props if p[2] or good[p[1]]),
                              n.extra if n.extra is not None and good[n.extra] else None)
        elif isinstance(n, Array) and n.items is not None and not good[n.items]:
            nodes[i] = Array(n.prefix, None, n.min_items, n.max_items)
    return Grammar(nodes, root, c.any)
