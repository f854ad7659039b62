"""The Flask app (factory, as in Flask's tutorial): mounts the transports (HTTP JSON under each
controller of the table, /nodeworx/mail/imap and /nodeworx/mail/simap; XML-RPC at /xmlrpc; SOAP
at /soap and /nodeworx/soap), /healthz, /metrics, /openapi.json and the reference at /docs, and
gives every reply, errors included, the InterWorx envelope (on the SOAP paths: a SOAP Fault)."""
from __future__ import annotations

import json
import logging
from typing import Any, Callable

from flask import Flask, Response, request
from werkzeug.exceptions import BadRequest, HTTPException
from werkzeug.exceptions import NotFound as NoRoute

from imapd_ctl.core.actions import CONTROLLERS, brief
from imapd_ctl.core.errors import ApiError, NotFound
from imapd_ctl.core.dispatch import Context, check_metrics_reader, dispatch
from imapd_ctl.core.request import Request, Result
from imapd_ctl.transports import http, openapi, reference, soap, xmlrpc
from imapd_ctl.transports.body import WSGIApp, bounded, envelope_refusal
from imapd_ctl.transports.http import MAX_BODY, envelope


def _refusal(environ: dict[str, Any], status: int, text: str) -> tuple[bytes, str]:
    """A body refused below Flask (transports.body): a SOAP Fault on the SOAP paths."""
    if environ.get("PATH_INFO") in soap.PATHS:
        body, _, ctype = soap.fault(soap.version_of(environ.get("CONTENT_TYPE")), text, status)
        return body, ctype
    return envelope_refusal(environ, status, text)


Scrape = Callable[[], "tuple[bytes, str]"]   # /metrics: the body and its content type


def healthy() -> Response:
    return envelope(0, "ok")


def _direct(flask_app: WSGIApp, run: Callable[[Request], Result]) -> WSGIApp:
    """A GET, HEAD or POST to CONTROLLER/ACTION (the panels' polls: most of what the daemon
    serves) and a GET or HEAD of /healthz go to the HTTP transport without Flask's request
    context, routing and hooks, which cost a poll more than the action itself
    (bench/isrunning.py). Only requests the routes below would take and the hooks let through
    go this way; everything else is Flask's, which would answer them the same."""
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        path, method, raw = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD"), environ.get("RAW_URI", "")
        controller, _, action = path.rpartition("/")
        if not (isinstance(raw, str) and raw.isascii()):
            reply = None                                         # Flask's hook answers 400
        elif path == "/healthz" and method in ("GET", "HEAD"):
            reply = healthy()
        elif controller in CONTROLLERS and action and method in ("GET", "HEAD", "POST"):
            try:
                reply = http.handle(controller, action, run, environ)
            except Exception as exc:   # a bug (dispatch itself never raises): as internal_error below
                logging.getLogger(__name__).exception("unhandled error")
                reply = envelope(500, f"internal error in imapd-ctl: {type(exc).__name__}")
        else:
            reply = None
        return flask_app(environ, start_response) if reply is None else reply(environ, start_response)
    return app


def create_app(ctx: Context, *, scrape: Scrape | None = None, metrics_access: str = "local") -> Flask:
    """The app for one object graph's dispatch context (daemon.wiring.Services.context());
    `scrape` makes the text of /metrics, which `metrics_access` says who may read."""
    app = Flask("imapd_ctl")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    # Every body passes the limit below Flask, for all transports (transports.body); action
    # calls and /healthz then go straight to the HTTP transport (_direct).
    app.wsgi_app = bounded(_direct(app.wsgi_app, lambda req: dispatch(req, ctx)),  # type: ignore[method-assign,assignment]
                           MAX_BODY, _refusal)
    # `//` in a path is not merged with a 308 redirect (an HTML page, outside the envelope):
    # such a path matches no route and is a 404 like any other unknown path. Werkzeug also
    # drops leading slashes before matching, so those are refused here, before routing.
    app.url_map.merge_slashes = False
    app.extensions["imapd_ctl"] = ctx

    def run(req: Request) -> Result:
        return dispatch(req, ctx)

    @app.before_request
    def no_empty_segments() -> None:
        if "//" in request.environ.get("PATH_INFO", ""):
            raise NoRoute("the path has an empty segment (//)")

    @app.before_request
    def ascii_target() -> None:
        """A request target must be ASCII (RFC 9112; other bytes are percent-encoded). gunicorn
        27 refuses others itself; 20.1 and 23 (Debian 12 and 13) pass them on: same answer."""
        raw = request.environ.get("RAW_URI", "")
        if isinstance(raw, str) and not raw.isascii():
            raise BadRequest("the request target must be ASCII (percent-encode other bytes)")

    def action_route(controller: str, action: str) -> Response:   # what _direct leaves to Flask
        return http.handle(controller, action, run, request.environ, request._get_current_object())  # type: ignore[attr-defined]

    # No automatic OPTIONS: its empty 200 would be the one reply without the envelope.
    for path in CONTROLLERS:
        app.add_url_rule(f"{path}/<action>", endpoint=f"action:{path}", view_func=action_route,
                         defaults={"controller": path}, methods=["GET", "POST"],
                         provide_automatic_options=False)

    def soap_route() -> Response:
        if request.method != "POST":    # GET (?wsdl, as clients ask; any query) and HEAD
            return Response(soap.wsdl(request.base_url), content_type="text/xml; charset=utf-8")
        body, status, ctype = soap.handle(http.body_of(request.environ, request), request.content_type, http.peer(), run)
        return Response(body, status=status, content_type=ctype)

    @app.post("/xmlrpc", provide_automatic_options=False)
    def xmlrpc_route() -> Response:
        body = xmlrpc.handle(http.body_of(request.environ, request), http.peer(), run)
        return Response(body, mimetype="text/xml")

    for path in soap.PATHS:
        app.add_url_rule(path, f"soap:{path}", soap_route, methods=["GET", "POST"],
                         provide_automatic_options=False)

    @app.get("/healthz", provide_automatic_options=False)
    def healthz() -> Response:      # GET and HEAD take _direct's way; here other methods get 405
        return healthy()

    # Both made once: the table does not change while the daemon runs, and a client asking for
    # them in a loop must cost bytes sent, not a thread's CPU each time.
    described = json.dumps(openapi.document(), indent=1).encode()
    docs = reference.page().encode()

    @app.get("/openapi.json", provide_automatic_options=False)
    def openapi_route() -> Response:
        return Response(described, mimetype="application/json")

    @app.get("/docs", provide_automatic_options=False)
    def docs_route() -> Response:
        return Response(docs, content_type="text/html; charset=utf-8")

    @app.get("/metrics", provide_automatic_options=False)
    def metrics_route() -> Response:
        try:
            if scrape is None:
                raise NotFound("/metrics is not served by this app")
            check_metrics_reader(ctx, metrics_access, http.bearer, http.peer())
        except ApiError as exc:
            return envelope(exc.status, ctx.describe(exc))
        assert scrape is not None
        body, content_type = scrape()
        return Response(body, content_type=content_type)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        if request.path in soap.PATHS:    # a SOAP client reads a Fault, not our JSON
            body, status, ctype = soap.fault(soap.version_of(request.content_type),
                                             f"{exc.name}: {exc.description}", exc.code)
            return Response(body, status=status, content_type=ctype)
        if isinstance(exc, NoRoute) and exc.description == NoRoute.description:   # not one of ours
            return envelope(404, f"no such path {brief(request.path, 80)}: actions are at CONTROLLER/ACTION "
                                 f"with CONTROLLER one of {', '.join(CONTROLLERS)}; also /xmlrpc, /soap, "
                                 "/healthz, /metrics, /openapi.json, /docs")
        return envelope(exc.code or 500, f"{exc.name}: {exc.description}")

    @app.errorhandler(Exception)
    def internal_error(exc: Exception) -> Response:
        logging.getLogger(__name__).exception("unhandled error")
        return envelope(500, f"internal error in imapd-ctl: {type(exc).__name__}")

    return app
