"""The Flask app (factory, as in Flask's tutorial): HTTP JSON routes, /xmlrpc, /healthz and
/openapi.json, all derived from the action table. Every reply is the InterWorx envelope
{"status": N, "payload": ...}; a non-zero status is also the HTTP status."""
from __future__ import annotations

import io
import json
import logging

from flask import Flask, Response, request
from werkzeug.exceptions import BadRequest, HTTPException, RequestEntityTooLarge

from imapd_ctl.adapters import audit
from imapd_ctl.transports import openapi
from imapd_ctl.core import settings as settings_mod
from imapd_ctl.core.actions import CONTROLLER
from imapd_ctl.operations.controller import Controller, dispatch
from imapd_ctl.core.errors import BadInput
from imapd_ctl.adapters.keys import store_for
from imapd_ctl.transports.xmlrpc import handle_xmlrpc

MAX_BODY = 64 * 1024
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


def envelope(status: int, payload) -> Response:
    # json.dumps' default separators give the InterWorx look: {"status": 0, "payload": true}
    body = json.dumps({"status": status, "payload": payload}) + "\n"
    return Response(body, status=status or 200, mimetype="application/json")


def _peer() -> str:
    return request.remote_addr or "unix-socket"


def _bearer() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    return key.strip() if scheme.lower() == "bearer" and key.strip() else None


def _inputs() -> dict:
    """Inputs from the query string and a form or JSON-object body; each name at most once."""
    found: dict = {}

    def put(name, values):
        if name in found or len(values) != 1:
            raise BadInput(f"{name}: given more than once")
        found[name] = values[0]

    for name in request.args:
        put(name, request.args.getlist(name))
    if request.mimetype == "application/json":
        raw = request.get_data(cache=True)
        try:
            body = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates) if raw.strip() else {}
        except UnicodeDecodeError:
            raise BadInput("body: not valid UTF-8") from None
        except ValueError as exc:
            raise BadInput(f"body: not valid JSON ({exc})") from None
        except RecursionError:
            raise BadInput("body: not valid JSON (nested too deeply)") from None
        if not isinstance(body, dict):
            raise BadInput(f"body: must be a JSON object of named inputs, got {type(body).__name__}")
        for name, value in body.items():
            put(name, [value])
    elif request.mimetype in FORM_TYPES:
        # request.form would turn a body Werkzeug cannot parse (invalid UTF-8, a broken
        # multipart) into an empty form, and the action would run without its inputs.
        parser = request.make_form_data_parser()
        parser.silent = False
        data = request.get_data(cache=True)
        try:
            _, form, files = parser.parse(io.BytesIO(data), request.mimetype, len(data), request.mimetype_params)
        except ValueError as exc:
            raise BadInput(f"body: not a valid {request.mimetype} body ({exc})") from None
        for name in form:
            put(name, form.getlist(name))
        for name in files:   # an uploaded file is not a value: the input refuses it
            put(name, files.getlist(name))
    elif request.get_data(cache=True).strip():
        raise BadInput(f"body: send application/json or a form, not {request.mimetype or 'an untyped body'}")
    return found


def _no_duplicates(pairs: list) -> dict:
    """json.loads keeps the last of repeated keys; a repeated input is an error instead."""
    found = {}
    for name, value in pairs:
        if name in found:
            raise BadInput(f"{name}: given more than once")
        found[name] = value
    return found


def create_app(settings=None, controller=None, keys=None) -> Flask:
    settings = settings or settings_mod.load()
    app = Flask("imapd_ctl")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    controller = controller or Controller(settings)
    keys = keys or store_for(settings)
    audit.setup(settings.audit_log)
    app.extensions["imapd_ctl"] = {"settings": settings, "controller": controller, "keys": keys}

    @app.before_request
    def read_body():
        """Read the whole body here, once (later reads get this copy), and refuse one that is
        not all there: a chunked body has no Content-Length to refuse up front, and Werkzeug
        quietly stops reading it at MAX_CONTENT_LENGTH; a body that ends before its
        Content-Length is taken as it is. Either way the request would run with its tail,
        and the inputs in it, cut off. Broken chunked framing makes the server's reader raise
        (gunicorn's InvalidChunkSize...): the client's 400, not a 500."""
        try:
            data = request.get_data(cache=True)
            over = (request.content_length is None and len(data) >= MAX_BODY
                    and request.environ["wsgi.input"].read(1))
        except HTTPException:
            raise
        except Exception as exc:
            raise BadRequest(f"the request body could not be read ({type(exc).__name__})") from None
        if over:
            raise RequestEntityTooLarge()
        if request.content_length is not None and len(data) < request.content_length:
            raise BadRequest(f"the body ended after {len(data)} of its {request.content_length} bytes")

    # No automatic OPTIONS: its empty 200 would be the one reply without the envelope.
    @app.route(f"{CONTROLLER}/<action>", methods=["GET", "POST"], provide_automatic_options=False)
    def action_route(action):
        try:
            raw = _inputs()
        except BadInput as exc:
            # Bad encoding is reported only to a caller with a valid key, like any input error.
            raw = exc
        status, payload = dispatch(controller, keys, _bearer(), action, raw,
                                   transport="http", peer=_peer(),
                                   method="GET" if request.method == "HEAD" else request.method)
        return envelope(status, payload)

    @app.post("/xmlrpc", provide_automatic_options=False)
    def xmlrpc_route():
        body = handle_xmlrpc(request.get_data(), controller, keys, peer=_peer())
        return Response(body, mimetype="text/xml")

    @app.get("/healthz", provide_automatic_options=False)
    def healthz():
        return envelope(0, "ok")

    @app.get("/openapi.json", provide_automatic_options=False)
    def openapi_route():
        return Response(json.dumps(openapi.document(), indent=1), mimetype="application/json")

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        return envelope(exc.code or 500, f"{exc.name}: {exc.description}")

    @app.errorhandler(Exception)
    def internal_error(exc: Exception):
        logging.getLogger(__name__).exception("unhandled error")
        return envelope(500, f"internal error in imapd-ctl: {type(exc).__name__}")

    return app
