"""A corpus of JSON Schemas for the structured-output tests: the shapes users send
(nested objects, arrays of objects, enums, unions, recursion through $ref, formats, bounds)
and real-world documents (a calendar event, a product list, a GitHub issue, a JSON-RPC
call, ...). Each entry: (name, what the text before the JSON says it is, schema)."""
from __future__ import annotations


def obj(props: dict, required: list | None = None, extra: bool | dict = False) -> dict:
    """An object schema; every property required unless told (OpenAI's strict shape)."""
    return {"type": "object", "properties": props,
            "required": list(props) if required is None else required, "additionalProperties": extra}


S = {"type": "string"}
I = {"type": "integer"}
N = {"type": "number"}
B = {"type": "boolean"}
SHORT = {"type": "string", "maxLength": 40}
DATE = {"type": "string", "format": "date"}
DATETIME = {"type": "string", "format": "date-time"}
UUID = {"type": "string", "format": "uuid"}

CORPUS: list[tuple[str, str, dict]] = [
    # -- scalars and simple objects
    ("string", "a word", {"type": "string", "maxLength": 30}),
    ("integer", "a year", {"type": "integer", "minimum": 1900, "maximum": 2100}),
    ("number", "a probability", {"type": "number", "minimum": 0, "maximum": 1}),
    ("boolean", "yes or no", {"type": "boolean"}),
    ("nullable", "a nickname or null", {"type": ["string", "null"], "maxLength": 20}),
    ("person", "a person", obj({"name": SHORT, "age": {"type": "integer", "minimum": 0, "maximum": 130}})),
    ("point", "a 2D point", obj({"x": N, "y": N})),
    ("optional_fields", "a contact, phone optional",
     obj({"name": SHORT, "email": SHORT, "phone": SHORT}, required=["name"])),
    ("all_optional", "settings", obj({"dark_mode": B, "font_size": {"type": "integer", "minimum": 8, "maximum": 32}},
                                     required=[])),
    ("free_object", "any object", {"type": "object"}),
    ("string_map", "word counts", {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}}),
    ("props_and_extra", "a record with extra string fields",
     {"type": "object", "properties": {"id": I}, "required": ["id"], "additionalProperties": SHORT}),
    # -- nesting and arrays
    ("nested", "a user with an address",
     obj({"user": obj({"name": SHORT, "address": obj({"street": SHORT, "city": SHORT, "zip": SHORT})})})),
    ("string_list", "three fruits", {"type": "array", "items": SHORT, "minItems": 3, "maxItems": 3}),
    ("int_list", "some primes", {"type": "array", "items": {"type": "integer", "minimum": 2, "maximum": 1000},
                                 "maxItems": 8}),
    ("objects_list", "students and grades",
     {"type": "array", "items": obj({"name": SHORT, "grade": {"type": "integer", "minimum": 0, "maximum": 100}}),
      "minItems": 1, "maxItems": 4}),
    ("matrix", "a 2x2 matrix", {"type": "array", "items": {"type": "array", "items": N, "minItems": 2, "maxItems": 2},
                                "minItems": 2, "maxItems": 2}),
    ("tuple", "an RGB colour", {"type": "array", "prefixItems": [
        {"type": "integer", "minimum": 0, "maximum": 255}] * 3, "items": False}),
    ("tuple_then_items", "a header then values",
     {"type": "array", "prefixItems": [SHORT], "items": N, "maxItems": 5}),
    ("draft7_tuple", "a name and an age", {"$schema": "http://json-schema.org/draft-07/schema#", "type": "array",
                                            "items": [SHORT, {"type": "integer", "minimum": 0}],
                                            "additionalItems": False}),
    ("empty_array_ok", "tags, maybe none", obj({"tags": {"type": "array", "items": SHORT, "maxItems": 3}})),
    ("deep", "a four-level config", obj({"a": obj({"b": obj({"c": obj({"d": B})})})})),
    # -- enums, const, unions
    ("enum", "a colour", {"enum": ["red", "green", "blue"]}),
    ("mixed_enum", "a setting", {"enum": ["auto", 1, 2.5, True, None]}),
    ("numeric_enum_prefixes", "a size", {"enum": [1, 10, 100]}),
    ("const", "a versioned record", obj({"version": {"const": 2}, "data": SHORT})),
    ("sentiment", "a sentiment label",
     obj({"label": {"type": "string", "enum": ["positive", "negative", "neutral"]},
          "confidence": {"type": "number", "minimum": 0, "maximum": 1}})),
    ("type_union", "an id, a number or a string", obj({"id": {"type": ["integer", "string"], "maxLength": 12}})),
    ("anyof", "a value", {"anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 10},
                                    {"type": "array", "items": B, "maxItems": 3}]}),
    ("oneof_tagged", "a shape", {"oneOf": [
        obj({"kind": {"const": "circle"}, "radius": {"type": "number", "minimum": 0}}),
        obj({"kind": {"const": "rect"}, "w": {"type": "number", "minimum": 0}, "h": {"type": "number", "minimum": 0}})]}),
    ("anyof_objects_shared_prefix", "a payment",
     {"anyOf": [obj({"method": {"const": "card"}, "last4": {"type": "string", "maxLength": 4, "minLength": 4}}),
                obj({"method": {"const": "cash"}})]}),
    ("nullable_object", "an optional manager", obj({"manager": {"anyOf": [obj({"name": SHORT}), {"type": "null"}]}})),
    ("allof", "an employee", {"allOf": [{"type": "object", "properties": {"name": SHORT}, "required": ["name"]},
                                        {"properties": {"salary": {"type": "integer", "minimum": 0}},
                                         "required": ["salary"]}]}),
    # -- recursion through $ref
    ("tree", "a small tree", {"$ref": "#/$defs/node", "$defs": {"node": obj({
        "value": {"type": "integer"}, "children": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 2}})}}),
    ("linked_list", "a list of three steps", {"$defs": {"step": obj({"text": SHORT, "next": {
        "anyOf": [{"$ref": "#/$defs/step"}, {"type": "null"}]}})}, "$ref": "#/$defs/step"}),
    ("root_recursion", "a nested menu", obj({"label": SHORT, "items": {"type": "array", "items": {"$ref": "#"},
                                                                       "maxItems": 2}})),
    ("json_value", "any JSON", {"$defs": {"v": {"anyOf": [
        {"type": ["string", "number", "boolean", "null"], "maxLength": 20},
        {"type": "array", "items": {"$ref": "#/$defs/v"}, "maxItems": 3},
        {"type": "object", "additionalProperties": {"$ref": "#/$defs/v"}}]}}, "$ref": "#/$defs/v"}),
    ("comments", "a comment thread", {"$defs": {"comment": obj({
        "author": SHORT, "text": {"type": "string", "maxLength": 80},
        "replies": {"type": "array", "items": {"$ref": "#/$defs/comment"}, "maxItems": 2}})},
        "type": "array", "items": {"$ref": "#/$defs/comment"}, "maxItems": 2}),
    ("filesystem", "a folder listing", {"$defs": {"entry": {"oneOf": [
        obj({"type": {"const": "file"}, "name": SHORT, "size": {"type": "integer", "minimum": 0}}),
        obj({"type": {"const": "dir"}, "name": SHORT, "entries": {"type": "array", "items": {"$ref": "#/$defs/entry"},
                                                                  "maxItems": 3}})]}},
        "$ref": "#/$defs/entry"}),
    # -- formats
    ("date", "a birthday", obj({"birthday": DATE})),
    ("time", "an alarm", obj({"at": {"type": "string", "format": "time"}})),
    ("datetime", "a log timestamp", obj({"timestamp": DATETIME})),
    ("uuid", "a request id", obj({"request_id": UUID})),
    ("dates_list", "holidays", {"type": "array", "items": DATE, "minItems": 1, "maxItems": 3}),
    # -- bounds
    ("string_lengths", "a username", obj({"username": {"type": "string", "minLength": 3, "maxLength": 12}})),
    ("exclusive_bounds", "a percentage", obj({"p": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 100}})),
    ("negative_range", "a temperature", obj({"celsius": {"type": "integer", "minimum": -40, "maximum": -1}})),
    ("decimal_bounds", "a rating", obj({"stars": {"type": "number", "minimum": 0.5, "maximum": 5}})),
    ("items_bounds", "two to four tags", obj({"tags": {"type": "array", "items": {"type": "string", "maxLength": 10},
                                                       "minItems": 2, "maxItems": 4}})),
    # -- real-world documents
    ("calendar_event", "a calendar event", obj({
        "title": SHORT, "start": DATETIME, "end": DATETIME, "location": SHORT,
        "attendees": {"type": "array", "items": obj({"name": SHORT, "email": SHORT,
                                                     "status": {"enum": ["accepted", "declined", "tentative"]}}),
                      "maxItems": 3},
        "recurrence": {"anyOf": [{"enum": ["daily", "weekly", "monthly"]}, {"type": "null"}]}})),
    ("product_list", "a product list", obj({"products": {"type": "array", "maxItems": 3, "items": obj({
        "sku": SHORT, "name": SHORT, "price": {"type": "number", "minimum": 0},
        "currency": {"enum": ["USD", "EUR", "GBP"]}, "in_stock": B,
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 15}, "maxItems": 3}})}})),
    ("github_issue", "a GitHub issue", obj({
        "number": {"type": "integer", "minimum": 1}, "title": {"type": "string", "maxLength": 80},
        "state": {"enum": ["open", "closed"]}, "user": obj({"login": SHORT, "id": I}),
        "labels": {"type": "array", "items": obj({"name": SHORT, "color": {"type": "string", "minLength": 6,
                                                                            "maxLength": 6}}), "maxItems": 3},
        "assignees": {"type": "array", "items": SHORT, "maxItems": 2}, "created_at": DATETIME,
        "body": {"type": ["string", "null"], "maxLength": 200}})),
    ("jsonrpc_request", "a JSON-RPC 2.0 request", obj({
        "jsonrpc": {"const": "2.0"}, "method": SHORT, "params": {"type": "object", "additionalProperties": {
            "type": ["string", "number", "boolean"], "maxLength": 20}},
        "id": {"type": ["integer", "string"], "maxLength": 10}})),
    ("jsonrpc_response", "a JSON-RPC 2.0 response", {"oneOf": [
        obj({"jsonrpc": {"const": "2.0"}, "result": {"type": ["string", "number"], "maxLength": 30}, "id": I}),
        obj({"jsonrpc": {"const": "2.0"}, "error": obj({"code": I, "message": SHORT}), "id": I})]}),
    ("weather", "a weather report", obj({
        "city": SHORT, "date": DATE, "temperature_c": {"type": "number", "minimum": -90, "maximum": 60},
        "conditions": {"enum": ["sunny", "cloudy", "rain", "snow", "storm"]},
        "wind": obj({"speed_kmh": {"type": "number", "minimum": 0, "maximum": 400}, "direction": {
            "enum": ["N", "NE", "E", "SE", "S", "SW", "W", "NW"]}})})),
    ("recipe", "a recipe", obj({
        "name": SHORT, "servings": {"type": "integer", "minimum": 1, "maximum": 12},
        "ingredients": {"type": "array", "maxItems": 4, "items": obj({"item": SHORT, "quantity": N,
                                                                     "unit": {"enum": ["g", "ml", "cup", "piece"]}})},
        "steps": {"type": "array", "items": {"type": "string", "maxLength": 60}, "maxItems": 3}})),
    ("invoice", "an invoice", obj({
        "invoice_id": UUID, "issued": DATE, "customer": obj({"name": SHORT, "vat": {"type": ["string", "null"],
                                                                                   "maxLength": 15}}),
        "lines": {"type": "array", "minItems": 1, "maxItems": 3, "items": obj({
            "description": SHORT, "qty": {"type": "integer", "minimum": 1},
            "unit_price": {"type": "number", "minimum": 0}})},
        "total": {"type": "number", "minimum": 0}})),
    ("http_request", "an HTTP request", obj({
        "method": {"enum": ["GET", "POST", "PUT", "DELETE"]}, "url": {"type": "string", "maxLength": 60},
        "headers": {"type": "object", "additionalProperties": SHORT},
        "body": {"type": ["string", "null"], "maxLength": 60}})),
    ("log_entry", "a log line", obj({
        "ts": DATETIME, "level": {"enum": ["debug", "info", "warning", "error"]}, "logger": SHORT,
        "message": {"type": "string", "maxLength": 80}, "request_id": {"anyOf": [UUID, {"type": "null"}]}})),
    ("geojson_point", "a GeoJSON point", obj({
        "type": {"const": "Feature"}, "geometry": obj({"type": {"const": "Point"}, "coordinates": {
            "type": "array", "prefixItems": [{"type": "number", "minimum": -180, "maximum": 180},
                                             {"type": "number", "minimum": -90, "maximum": 90}], "items": False,
            "minItems": 2}}),
        "properties": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 20}}})),
    ("entities", "named entities in a sentence", obj({"entities": {"type": "array", "maxItems": 4, "items": obj({
        "text": SHORT, "type": {"enum": ["PERSON", "ORG", "PLACE", "DATE"]},
        "start": {"type": "integer", "minimum": 0}})}})),
    ("flight_booking", "a flight booking", obj({
        "booking_ref": {"type": "string", "minLength": 6, "maxLength": 6}, "passenger": obj({
            "first_name": SHORT, "last_name": SHORT, "birth_date": DATE}),
        "segments": {"type": "array", "minItems": 1, "maxItems": 2, "items": obj({
            "from": {"type": "string", "minLength": 3, "maxLength": 3}, "to": {"type": "string", "minLength": 3,
                                                                               "maxLength": 3},
            "departs": DATETIME, "seat": {"type": ["string", "null"], "maxLength": 4}})}})),
    ("semver", "a package version", obj({"major": {"type": "integer", "minimum": 0}, "minor": {"type": "integer",
                                                                                               "minimum": 0},
                                         "patch": {"type": "integer", "minimum": 0},
                                         "prerelease": {"type": ["string", "null"], "maxLength": 10}})),
    ("todo_list", "a to-do list", obj({"todos": {"type": "array", "maxItems": 4, "items": obj({
        "id": {"type": "integer", "minimum": 1}, "task": SHORT, "done": B,
        "due": {"anyOf": [DATE, {"type": "null"}]}, "priority": {"enum": ["low", "medium", "high"]}})}})),
    ("bank_transaction", "a bank transaction", obj({
        "id": UUID, "at": DATETIME, "amount": {"type": "number", "exclusiveMinimum": 0, "maximum": 1000000},
        "currency": {"type": "string", "minLength": 3, "maxLength": 3}, "direction": {"enum": ["debit", "credit"]},
        "counterparty": SHORT})),
    ("pydantic_style", "a movie review", {
        "$defs": {"Rating": {"title": "Rating", "type": "integer", "minimum": 1, "maximum": 5},
                  "Reviewer": {"title": "Reviewer", "type": "object", "properties": {
                      "name": {"title": "Name", "type": "string", "maxLength": 30},
                      "verified": {"title": "Verified", "type": "boolean"}},
                      "required": ["name", "verified"], "additionalProperties": False}},
        "title": "Review", "type": "object",
        "properties": {"movie": {"title": "Movie", "type": "string", "maxLength": 40},
                       "rating": {"$ref": "#/$defs/Rating"}, "reviewer": {"$ref": "#/$defs/Reviewer"},
                       "summary": {"title": "Summary", "type": "string", "maxLength": 100}},
        "required": ["movie", "rating", "reviewer", "summary"], "additionalProperties": False}),
    ("survey", "a survey response", obj({
        "respondent": UUID, "answers": {"type": "array", "maxItems": 3, "items": {"oneOf": [
            obj({"q": {"type": "integer", "minimum": 1}, "choice": {"enum": ["a", "b", "c", "d"]}}),
            obj({"q": {"type": "integer", "minimum": 1}, "text": {"type": "string", "maxLength": 50}})]}}})),
    ("employee_directory", "an employee directory", obj({"employees": {"type": "array", "maxItems": 3, "items": obj({
        "id": {"type": "integer", "minimum": 1}, "name": SHORT, "department": {
            "enum": ["engineering", "sales", "support", "finance"]},
        "hired": DATE, "manager_id": {"type": ["integer", "null"], "minimum": 1}})}})),
    ("email", "an email", obj({"from": SHORT, "to": {"type": "array", "items": SHORT, "minItems": 1, "maxItems": 3},
                               "subject": {"type": "string", "maxLength": 60},
                               "body": {"type": "string", "maxLength": 200}, "sent": DATETIME})),
    ("container_spec", "a container spec", obj({
        "name": SHORT, "image": SHORT, "ports": {"type": "array", "maxItems": 3, "items": {
            "type": "integer", "minimum": 1, "maximum": 65535}},
        "env": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 30}},
        "resources": obj({"cpu": {"type": "number", "exclusiveMinimum": 0, "maximum": 64},
                          "memory_mb": {"type": "integer", "minimum": 16, "maximum": 65536}})})),
    ("sql_query", "a query description", obj({
        "table": SHORT, "columns": {"type": "array", "items": SHORT, "minItems": 1, "maxItems": 4},
        "where": {"type": "array", "maxItems": 2, "items": obj({"column": SHORT, "op": {"enum": ["=", "<", ">", "!="]},
                                                                "value": {"type": ["string", "number"],
                                                                          "maxLength": 20}})},
        "limit": {"type": ["integer", "null"], "minimum": 1, "maximum": 1000}})),
    ("chat_messages", "a short chat", {"type": "array", "minItems": 2, "maxItems": 4, "items": obj({
        "role": {"enum": ["system", "user", "assistant"]}, "content": {"type": "string", "maxLength": 80}})}),
    ("book", "a book", obj({"isbn": {"type": "string", "minLength": 10, "maxLength": 13}, "title": SHORT,
                             "authors": {"type": "array", "items": SHORT, "minItems": 1, "maxItems": 3},
                             "year": {"type": "integer", "minimum": 1450, "maximum": 2030},
                             "genres": {"type": "array", "items": {"enum": ["fiction", "science", "history",
                                                                             "poetry"]}, "maxItems": 2}})),
    ("sports_match", "a football result", obj({"home": SHORT, "away": SHORT,
                                               "score": {"type": "array", "prefixItems": [
                                                   {"type": "integer", "minimum": 0, "maximum": 20}] * 2,
                                                   "items": False, "minItems": 2},
                                               "played_on": DATE, "status": {"enum": ["final", "live", "postponed"]}})),
]
