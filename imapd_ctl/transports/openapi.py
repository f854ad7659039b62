"""/openapi.json, generated from the action table."""
from __future__ import annotations

from typing import Any

from imapd_ctl import __version__
from imapd_ctl.core.actions import ACTIONS, CONTROLLERS, IMAP, PERMISSION, Input


def _schema(spec: Input) -> dict[str, Any]:
    if spec.kind == "int":
        # Strings of ASCII digits are accepted too (forms, query strings, big XML-RPC values).
        return {"oneOf": [{"type": "integer", "minimum": spec.minimum, "maximum": spec.maximum},
                          {"type": "string", "pattern": r"^-?[0-9]{1,30}$"}]}
    return {"type": "string", "pattern": f"^{spec.pattern}$"}


def document() -> dict[str, Any]:
    envelope = {"$ref": "#/components/schemas/Envelope"}
    responses = {str(code): {"description": why, "content": {"application/json": {"schema": envelope}}}
                 for code, why in [("200", "status 0 and the payload"), ("400", "bad input"),
                                   ("401", "no or unknown key"), ("403", f"key lacks {PERMISSION}"),
                                   ("404", "unknown action or node"), ("405", "method not allowed"),
                                   ("409", "another change is in progress"), ("500", "the action failed"),
                                   ("503", "systemd unreachable")]}
    paths: dict[str, Any] = {}
    for service, action in ((s, a) for s in CONTROLLERS.values() for a in ACTIONS.values()):
        props = {i.name: {**_schema(i), "description": i.description} for i in action.inputs}
        # operationIds are unique across the document: the imap controller's keep the bare names.
        op_id = action.name if service == IMAP else f"{service.path.rsplit('/', 1)[1]}_{action.name}"
        op = {"operationId": op_id, "summary": action.description, "tags": [service.title],
              "description": f"{service.title} ({service.service_id}). Added in {action.added_in}."
                             + (" Changes the server." if action.mutating else ""),
              "responses": responses}
        item: dict[str, Any] = {"post": {**op, "requestBody": {"required": False, "content": {
            "application/json": {"schema": {"type": "object", "properties": props}},
            "application/x-www-form-urlencoded": {"schema": {"type": "object", "properties": props}}}}}}
        if not action.mutating:
            item["get"] = {**op, "operationId": op_id + "Get",
                           "parameters": [{"name": i.name, "in": "query", "schema": _schema(i)}
                                          for i in action.inputs]}
        paths[f"{service.path}/{action.name}"] = item
    return {
        "openapi": "3.0.3",
        "info": {"title": "imapd-ctl: InterWorx " + " and ".join(s.title for s in CONTROLLERS.values())
                          + " controllers", "version": __version__},
        "paths": paths,
        "security": [{"apikey": []}],
        "components": {
            "securitySchemes": {"apikey": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Envelope": {"type": "object", "required": ["status", "payload"], "properties": {
                "status": {"type": "integer", "description": "0 on success, else the HTTP status"},
                "payload": {"description": "the result, or a message saying what was wrong"}}}},
        },
    }
