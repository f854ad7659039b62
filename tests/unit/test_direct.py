"""Action calls and /healthz take a short way past Flask (transports.app._direct): for every
shape of request, the reply is the one Flask's own routes, hooks and error handlers give."""
import pytest
from flask import Flask
from werkzeug.test import Client

I, S = "/nodeworx/mail/imap", "/nodeworx/mail/simap"

SHAPES = [
    ("GET", f"{I}/isRunning", {}, None), ("HEAD", f"{I}/isRunning", {}, None),
    ("POST", f"{I}/isRunning", {"json": {}}, None), ("GET", f"{S}/isRunning", {}, None),
    ("GET", f"{I}/queryUpdate", {}, None), ("GET", f"{I}/isRunningOnNode?node_id=mail1", {}, None),
    ("GET", f"{I}/isRunningOnNode?node_id=%ff", {}, None),
    ("POST", f"{I}/isRunningOnNode", {"data": "node_id=mail1",
                                     "content_type": "application/x-www-form-urlencoded"}, None),
    ("POST", f"{I}/isRunning", {"data": "{", "content_type": "application/json"}, None),
    ("POST", f"{I}/isRunning", {"data": "x", "content_type": "text/plain"}, None),
    ("GET", f"{I}/restart", {}, None),                    # a change by GET: 405 before it runs
    ("GET", f"{I}/noSuchAction", {}, None), ("GET", f"{I}/isRunning", {}, "no key"),
    ("GET", f"{I}/isRunning", {}, "bad key"), ("GET", "/healthz", {}, None),
    ("HEAD", "/healthz", {}, None), ("POST", "/healthz", {}, None),      # these on to Flask
    ("PUT", f"{I}/isRunning", {}, None), ("GET", f"{I}/", {}, None), ("GET", f"{I}//isRunning", {}, None),
    ("GET", f"{I}/isRunning/x", {}, None), ("GET", "/nodeworx/mail/pop3/isRunning", {}, None),
]


@pytest.mark.parametrize("method,path,kw,auth", SHAPES, ids=lambda v: str(v))
def test_the_short_way_answers_as_flask_does(env, method, path, kw, auth):
    headers = {} if auth == "no key" else {"Authorization": "Bearer nope" if auth == "bad key" else
                                           f"Bearer {env.key}"}
    flask_only = Client(lambda environ, start: Flask.wsgi_app(env.app, environ, start))
    short, full = (client.open(path, method=method, headers=headers, **kw) for client in (env.client, flask_only))
    assert (short.status_code, short.data, short.content_type) == (full.status_code, full.data, full.content_type)
