"""The JSON Schema compiler and its automaton, against the `jsonschema` package (the
independent validator, with its format checker) and Python's own date, time and uuid
parsers: random texts the automaton accepts must validate, documents that validate must
be accepted, and what is not supported is an error that names it."""
from __future__ import annotations

import datetime
import json
import random
import uuid

import jsonschema
import pytest
import rfc3339_validator

from runner.structured import SchemaError, compile_schema
from runner.structured.automaton import Machine
from runner.structured.formats import format_regex
from schema_corpus import CORPUS

pytestmark = pytest.mark.fast

PROBE = "".join(map(chr, range(0x20, 0x7F))) + "\n\t\r\x00\x80\xc3\xa9\xf0\xff"
STRING_CHARS = "abcxyz ABC019-_.:/@é😀\"\\"


def validator(schema):
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def random_text(m: Machine, rng: random.Random, max_chars: int = 600) -> str | None:
    """A random text the automaton accepts whole, chosen a character at a time (ending
    more eagerly as it grows); None if it grew past max_chars. Also checks that
    `allowed` lists exactly the characters `step` takes."""
    state, out = m.start(), []
    while len(out) < max_chars:
        if m.done(state) or (m.can_end(state) and rng.random() < 0.3):
            return "".join(out).encode("latin-1").decode("utf-8")
        chars = m.allowed(state)
        if chars is not None:
            takes = "".join(c for c in PROBE if m.step(state, c) is not None)
            assert set(takes) == set(chars) & set(PROBE), (out, chars, takes)
            options = list(chars)
        else:
            options = [c for ch in STRING_CHARS for c in [ch.encode("utf-8").decode("latin-1")[0]]]
        options = [c for c in options if m.step(state, c) is not None]
        if not options and m.can_end(state):        # a whole number at the top: only the end follows
            return "".join(out).encode("latin-1").decode("utf-8")
        assert options, f"a dead end after {''.join(out)!r}"
        late = len(out) / max_chars
        weights = [(1 + 30 * late) if c in '"]}' else 0.2 if c in " \n\t" else 1 for c in options]
        c = rng.choices(options, weights)[0]
        state = m.step(state, c)
        out.append(c)
    return None


@pytest.mark.parametrize("name,what,schema", CORPUS, ids=[c[0] for c in CORPUS])
def test_every_text_the_automaton_accepts_validates(name, what, schema):
    m = Machine(compile_schema(schema))
    v = validator(schema)
    rng = random.Random(name)
    done = 0
    for _ in range(8):
        text = random_text(m, rng, 300)
        if text is None:
            continue
        value = json.loads(text)
        errors = [e.message for e in v.iter_errors(value)]
        assert not errors, f"{text!r}: {errors}"
        done += 1
    assert done >= 4, "the random walks should mostly finish"


EXAMPLES = [
    ({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string"}}, "required": ["a"]},
     [{"a": 1}, {"a": -5, "b": "x"}]),
    ({"type": "array", "prefixItems": [{"type": "string"}, {"type": "boolean"}], "items": {"type": "null"},
      "minItems": 1, "maxItems": 4}, [["a"], ["a", True], ["a", False, None, None]]),
    ({"enum": [1, "one", None, 2.5]}, [1, "one", None, 2.5]),
    ({"type": "string", "minLength": 2, "maxLength": 3}, ["ab", "abc", "é😀", "\n\t"]),
    ({"type": "integer", "minimum": -3, "exclusiveMaximum": 12}, [-3, 0, 11]),
    ({"type": "number", "minimum": 0.25, "maximum": 99.5}, [0.25, 1, 99.5, 3.14159]),
    ({"type": "string", "format": "date"}, ["2024-02-29", "0001-01-01", "1999-12-31"]),
    ({"type": "string", "format": "time"}, ["23:59:59Z", "00:00:00.123+05:30"]),
    ({"type": "string", "format": "date-time"}, ["2024-05-01T12:30:00-07:00"]),
    ({"type": "string", "format": "uuid"}, [str(uuid.UUID(int=7)), str(uuid.UUID(int=2**128 - 1)).upper()]),
    ({"$ref": "#/$defs/t", "$defs": {"t": {"type": "object", "properties": {
        "kids": {"type": "array", "items": {"$ref": "#/$defs/t"}}}, "required": ["kids"]}}},
     [{"kids": []}, {"kids": [{"kids": [{"kids": []}]}]}]),
    ({"oneOf": [{"type": "object", "properties": {"k": {"const": "a"}}, "required": ["k"], "additionalProperties": False},
                {"type": "array", "items": {"type": "integer"}}]}, [{"k": "a"}, [1, 2]]),
]


@pytest.mark.parametrize("schema,values", EXAMPLES, ids=range(len(EXAMPLES)))
def test_documents_that_validate_are_accepted(schema, values):
    m = Machine(compile_schema(schema))
    for value in values:
        validator(schema).validate(value)
        for text in (json.dumps(value, ensure_ascii=False), json.dumps(value, indent=2),
                     json.dumps(value, separators=(",", ":"))):
            state = m.feed(m.start(), text.encode("utf-8").decode("latin-1"))
            assert state is not None and m.can_end(state), text


@pytest.mark.parametrize("schema,text", [
    ({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"],
      "additionalProperties": False}, '{"a": 1, "b": 2}'),
    ({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}, "{}"),
    ({"type": "integer", "minimum": 10, "maximum": 20}, "21"),
    ({"type": "integer", "minimum": 10, "maximum": 20}, "9"),
    ({"type": "integer"}, "1.5"),
    ({"type": "number", "exclusiveMinimum": 0}, "0"),
    ({"type": "string", "maxLength": 2}, '"abc"'),
    ({"type": "string", "minLength": 2}, '"é"'),
    ({"type": "array", "items": {"type": "integer"}, "maxItems": 1}, "[1, 2]"),
    ({"type": "array", "minItems": 2}, "[1]"),
    ({"type": "array", "prefixItems": [{"type": "integer"}], "items": False}, "[1, 2]"),
    ({"enum": ["a", "b"]}, '"c"'),
    ({"const": 3}, "4"),
    ({"type": "string", "format": "date"}, '"2023-02-29"'),
    ({"type": "string", "format": "date"}, '"0000-01-01"'),
    ({"type": "string", "format": "uuid"}, '"1234"'),
    ({"type": "boolean"}, "null"),
    ({"type": "object", "additionalProperties": {"type": "integer"}}, '{"a": "x"}'),
])
def test_documents_that_do_not_validate_are_refused(schema, text):
    with pytest.raises(jsonschema.ValidationError):
        validator(schema).validate(json.loads(text))
    m = Machine(compile_schema(schema))
    state = m.feed(m.start(), text.encode("utf-8").decode("latin-1"))
    assert state is None or not m.can_end(state)


def test_formats_generate_only_what_python_parses():
    """Every date, time, date-time and uuid the format expressions accept parses with
    Python's own parsers; random strings both ways agree."""
    rng = random.Random(1)
    checks = {"date": lambda s: datetime.date.fromisoformat(s),
              "time": lambda s: rfc3339_validator.validate_rfc3339("1970-01-01T" + s) or 1 / 0,
              "date-time": lambda s: rfc3339_validator.validate_rfc3339(s) or 1 / 0,
              "uuid": lambda s: uuid.UUID(s)}
    for name, check in checks.items():
        rx = format_regex(name)
        m = Machine(compile_schema({"type": "string", "format": name}))
        for _ in range(40):
            text = random_text(m, rng, 80)
            assert text is not None
            check(json.loads(text))
        day = datetime.date(1, 1, 1)
        for _ in range(500):                            # every real date is accepted
            d = day + datetime.timedelta(days=rng.randrange(3652058))
            assert format_regex("date").fullmatch(d.isoformat())
        assert rx.fullmatch("x") is False


@pytest.mark.parametrize("schema,words", [
    ({"type": "string", "pattern": "^a+$"}, ["'pattern'", "#"]),
    ({"type": "object", "properties": {"zip": {"type": "string", "pattern": "x"}}}, ["'pattern'", "#/properties/zip"]),
    ({"type": "array", "uniqueItems": True}, ["'uniqueItems'"]),
    ({"type": "object", "minProperties": 1}, ["'minProperties'"]),
    ({"type": "number", "multipleOf": 2}, ["'multipleOf'"]),
    ({"not": {"type": "string"}}, ["'not'"]),
    ({"if": {}, "then": {}}, ["'if'"]),
    ({"type": "string", "format": "email"}, ['"email"', "date, time, date-time, uuid"]),
    ({"$ref": "https://example.com/s.json"}, ["only references inside the schema"]),
    ({"$ref": "#/$defs/missing"}, ["points at nothing"]),
    ({"type": "strin"}, ["/type", "strin"]),
    ({"type": "string", "minLength": 5, "maxLength": 2}, ["maxLength 2 is below minLength 5"]),
    ({"type": "integer", "minimum": 5, "maximum": 4}, ["no integer lies between the bounds"]),
    ({"type": "object", "properties": {}, "required": ["a"]}, ["'a' is not among the properties"]),
    ({"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/a"}}}, ["refers to itself"]),
    ({"type": "object", "properties": {"next": {"$ref": "#"}}, "required": ["next"]}, ["no finite instance"]),
    ({"enum": ["a", 1], "type": "boolean"}, ["no value fits"]),
    (False, ["allows no value"]),
    ("string", ["must be an object or a boolean"]),
])
def test_what_is_not_supported_is_an_error_that_names_it(schema, words):
    with pytest.raises(SchemaError) as e:
        compile_schema(schema)
    for w in words:
        assert w in str(e.value), str(e.value)


def test_compound_enum_values_are_written_compactly():
    m = Machine(compile_schema({"enum": [[1, 2], {"a": None}]}))
    for text in ("[1,2]", '{"a":null}'):
        assert m.done(m.feed(m.start(), text))
    assert m.feed(m.start(), "[1, 2]") is None


def test_allof_merges_and_additional_properties_keep_their_meaning():
    """additionalProperties: false in one part forbids what only another part declares."""
    parts = [{"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
             {"properties": {"b": {"type": "integer"}}, "required": ["b"]}]
    m = Machine(compile_schema({"allOf": parts}))
    assert m.done(m.feed(m.start(), '{"a":1,"b":2}'))
    closed = [{**parts[0], "additionalProperties": False}, parts[1]]
    with pytest.raises(SchemaError, match="'b'"):
        compile_schema({"allOf": closed})
    m = Machine(compile_schema({"allOf": [closed[0], {"properties": {"a": {"minimum": 3}}}]}))
    assert m.feed(m.start(), '{"a":2}') is None and m.done(m.feed(m.start(), '{"a":3}'))


def test_optional_properties_keep_their_order_and_may_be_skipped():
    m = Machine(compile_schema({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"},
                                                                 "c": {"type": "integer"}}, "required": ["b"]}))
    ok = ['{"b":1}', '{"a":1,"b":2}', '{"b":1,"c":2}', '{"a":1,"b":2,"c":3}']
    bad = ['{}', '{"c":1}', '{"b":1,"a":2}', '{"a":1,"c":2}', '{"b":1,"b":2}']
    for t in ok:
        assert m.done(m.feed(m.start(), t)), t
    for t in bad:
        s = m.feed(m.start(), t)
        assert s is None or not m.done(s), t


def test_free_keys_never_repeat_a_declared_property():
    schema = {"type": "object", "properties": {"id": {"type": "integer"}}, "additionalProperties": {"type": "string"}}
    m = Machine(compile_schema(schema))
    assert m.done(m.feed(m.start(), '{"id":1,"name":"x"}'))
    assert m.feed(m.start(), '{"id":1,"id"') is None
    assert m.done(m.feed(m.start(), '{"idx":"y"}'))
