"""/openapi.json, generated from the action table: every action of both controllers, what its
inputs allow and what its payload is, and the endpoints that are not actions. What repeats
(the envelope, the error replies, an action's inputs) is a component, referred to."""
from __future__ import annotations

from typing import Any

from imapd_ctl import __version__
from imapd_ctl.core.actions import ACTIONS, CONTROLLERS, IMAP, PERMISSION, Action, Input

_ENVELOPE = "#/components/schemas/Envelope"
_FIELDS = ("imap_mem_limit", "imap_max_connections", "imap_secure_mem_limit", "imap_secure_max_connections")

# What an action's payload is (Action.returns), as a JSON schema.
PAYLOADS: dict[str, dict[str, Any]] = {
    "boolean": {"type": "boolean", "description": "true when the unit is active and listens on the port"},
    "string": {"type": "string"},
    "integers": {"type": "array", "items": {"type": "integer"}},
    "strings": {"type": "array", "items": {"type": "string"}},
    "service_info": {"type": "object", "required": ["id", "name", "ports", "page", "ctrl", "is_running"],
                     "properties": {"id": {"type": "string"}, "name": {"type": "string"},
                                    "ports": {"type": "string"}, "page": {"type": "string"},
                                    "ctrl": {"type": "string"}, "is_running": {"type": "integer", "enum": [0, 1]}}},
    "message": {"oneOf": [
        {"type": "string", "description": "what was done (update with dry_run=1: the unified diff)"},
        {"type": "array", "description": "with cascade_to_nodes=1: every node's outcome, this node first",
         "items": {"type": "object", "required": ["id", "status", "payload"], "properties": {
             "id": {"type": "string"}, "status": {"type": "integer"}, "payload": {"type": "string"}}}}]},
    "values": {"type": "object", "required": list(_FIELDS),
               "properties": {name: {"type": "integer"} for name in _FIELDS}},
    "start_on_boot": {"type": "object", "required": ["mda_imap_startonboot"],
                      "properties": {"mda_imap_startonboot": {"type": "integer", "enum": [0, 1]}}},
    "capacity": {"type": "object", "description": "per port the connections in use, the limit in force and "
                 "the headroom; the server's pools, its units' health and saturation signals",
                 "required": ["flavour", "ports", "pools", "units", "saturated", "signals", "summary", "checked_at"],
                 "properties": {"flavour": {"type": "string"}, "ports": {"type": "array", "items": {"type": "object"}},
                                "pools": {"type": "array", "items": {"type": "object"}},
                                "units": {"type": "array", "items": {"type": "object"}},
                                "saturated": {"type": "boolean"},
                                "signals": {"type": "array", "items": {"type": "object"}},
                                "summary": {"type": "string"}, "checked_at": {"type": "integer"}}},
}

ERRORS = {"400": ("BadInput", "bad input: the message names the input and what it allows; nothing changed"),
           "401": ("Unauthorized", "no key, or an unknown one"),
           "403": ("Forbidden", f"the key lacks the {PERMISSION} permission"),
           "404": ("NotFound", "no such action or node"),
           "405": ("MethodNotAllowed", "an action that changes the server asked with GET"),
           "409": ("Busy", "another change holds the lock"),
           "500": ("Failed", "the action failed: the message says why and what was put back"),
           "502": ("NodeFailed", "a cascade failed on some node: the payload is every node's outcome"),
           "503": ("Unavailable", "systemd unreachable over D-Bus, or changes refused until `imapd-ctl recover`")}


def _schema(spec: Input) -> dict[str, Any]:
    if spec.kind == "int":
        assert spec.minimum is not None and spec.maximum is not None
        # Strings of ASCII digits are accepted too (forms, query strings, big XML-RPC values).
        digits = f"[0-9]{{1,{len(str(spec.maximum))}}}"
        return {"oneOf": [{"type": "integer", "minimum": spec.minimum, "maximum": spec.maximum},
                          {"type": "string", "pattern": f"^{'-?' if spec.minimum < 0 else ''}{digits}$"}]}
    return {"type": "string", "pattern": f"^{spec.pattern}$"}


def _property(spec: Input) -> dict[str, Any]:
    return {**_schema(spec), "description": spec.description or spec.allowed(),
            **({"example": spec.example} if spec.example else {})}


def _operation(action: Action, service_label: str, title: str, service_id: str) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": {"$ref": f"#/components/responses/Ok_{action.returns}"}}
    codes = ["400", "401", "403", "404"] + (["405", "409", "503"] if action.mutating else ["503"]) + ["500"]
    if any(i.name == "cascade_to_nodes" for i in action.inputs) or action.local_action:
        codes.append("502")
    responses.update({code: {"$ref": f"#/components/responses/{ERRORS[code][0]}"} for code in sorted(codes)})
    return {"operationId": action.name if service_label == "imap" else f"{service_label}_{action.name}",
            "summary": action.description, "tags": [title],
            "description": f"{title} ({service_id}). Added in {action.added_in}."
                           + (" Changes the server: POST only." if action.mutating else ""),
            "responses": responses}


def _inputs_body(action: Action) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/Inputs_{action.name}"}
    return {"required": False, "content": {"application/json": {"schema": ref},
                                           "application/x-www-form-urlencoded": {"schema": ref}}}


def _other_paths() -> dict[str, Any]:
    text = {"description": "", "content": {"text/plain": {"schema": {"type": "string"}}}}
    xml = {"content": {"text/xml": {"schema": {"type": "string"}}}}
    return {
        "/healthz": {"get": {"operationId": "healthz", "summary": "The daemon answers (no key)", "security": [],
                             "tags": ["daemon"], "responses": {"200": {"$ref": "#/components/responses/Ok_string"}}}},
        "/metrics": {"get": {"operationId": "metrics", "tags": ["daemon"], "security": [],
                             "summary": "Prometheus' text format (who may read it: the metrics_access setting)",
                             "responses": {"200": {**text, "description": "the series"},
                                           "403": {"$ref": "#/components/responses/Forbidden"}}}},
        "/xmlrpc": {"post": {"operationId": "xmlrpc", "tags": ["InterWorx clients"], "security": [],
                             "summary": "XML-RPC: iworx.route(apikey, controller, action, inputs), the key "
                                        "in the call", "requestBody": {"required": True, **xml},
                             "responses": {"200": {**xml, "description": "a methodResponse: the envelope as a "
                                                                         "struct, or a fault"}}}},
        "/soap": {"get": {"operationId": "wsdl", "tags": ["InterWorx clients"], "security": [],
                          "summary": "The WSDL (as SoapClient asks for it: /soap?wsdl)",
                          "responses": {"200": {**xml, "description": "the WSDL"}}},
                  "post": {"operationId": "soap", "tags": ["InterWorx clients"], "security": [],
                           "summary": "SOAP 1.1 and 1.2: route(apikey, ctrl_name, action, input), the key in "
                                      "the call", "requestBody": {"required": True, **xml},
                           "responses": {"200": {**xml, "description": "the envelope, or a SOAP Fault"}}}},
        "/openapi.json": {"get": {"operationId": "openapi", "tags": ["daemon"], "security": [],
                                  "summary": "This document",
                                  "responses": {"200": {"description": "OpenAPI 3.0"}}}},
        "/docs": {"get": {"operationId": "docs", "tags": ["daemon"], "security": [],
                          "summary": "The API reference as one HTML page (no key)",
                          "responses": {"200": {"description": "HTML",
                                                "content": {"text/html": {"schema": {"type": "string"}}}}}}},
    }


def document() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for service in CONTROLLERS.values():
        label = service.label
        for action in ACTIONS.values():
            op = _operation(action, label, service.title, service.service_id)
            item: dict[str, Any] = {"post": {**op, "requestBody": _inputs_body(action)}}
            if not action.mutating:
                item["get"] = {**op, "operationId": op["operationId"] + "Get",
                               "parameters": [{"name": i.name, "in": "query", "schema": _schema(i),
                                               "description": i.description or i.allowed()}
                                              for i in action.inputs]}
            paths[f"{service.path}/{action.name}"] = item
    paths.update(_other_paths())
    envelope = {"type": "object", "required": ["status", "payload"], "properties": {
        "status": {"type": "integer", "description": "0 on success, else the HTTP status"},
        "payload": {"description": "the result, or a sentence saying what was wrong and what to do"}}}
    schemas: dict[str, Any] = {"Envelope": envelope}
    schemas.update({f"Inputs_{a.name}": {"type": "object", "additionalProperties": False,
                                         "properties": {i.name: _property(i) for i in a.inputs}}
                    for a in ACTIONS.values()})
    responses: dict[str, Any] = {
        f"Ok_{name}": {"description": "status 0 and the payload", "content": {"application/json": {"schema": {
            "allOf": [{"$ref": _ENVELOPE}, {"properties": {"status": {"enum": [0]}, "payload": schema}}]}}}}
        for name, schema in PAYLOADS.items()}
    responses.update({name: {"description": why, "content": {"application/json": {"schema": {"$ref": _ENVELOPE}}}}
                      for name, why in ERRORS.values()})
    return {
        "openapi": "3.0.3",
        "info": {"title": "imapd-ctl: InterWorx " + " and ".join(s.title for s in CONTROLLERS.values())
                          + " controllers", "version": __version__,
                 "description": "Every action answers the envelope {status, payload}. Read-only actions "
                                "answer GET and POST, the others POST only; inputs as JSON, a form, or (GET) "
                                "the query string. The same actions over XML-RPC (/xmlrpc) and SOAP (/soap)."},
        "servers": [
            {"url": "http://localhost", "description": "the unix socket (curl --unix-socket "
                                                       "/run/imapd-ctl/imapd-ctl.sock); root needs no key there"},
            {"url": "http://127.0.0.1:8143", "description": "loopback TCP (the default listener)"},
            {"url": "https://{host}:2443", "description": "the TLS listener, where InterWorx clients call",
             "variables": {"host": {"default": "mail.example.com"}}}],
        "paths": paths,
        "security": [{"apikey": []}],
        "tags": [{"name": s.title, "description": f"{s.path}: {s.general_name}, port "
                                                  f"{'993' if s.secure else '143'}"} for s in CONTROLLERS.values()],
        "components": {
            "securitySchemes": {"apikey": {"type": "http", "scheme": "bearer",
                                           "description": "an API key (`imapd-ctl key create NAME`)"}},
            "schemas": schemas, "responses": responses,
        },
    }


assert set(PAYLOADS) >= {a.returns for a in ACTIONS.values()}, "an action returns an undescribed payload"
assert IMAP.label == "imap"
