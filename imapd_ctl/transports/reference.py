"""The API reference a person reads, made from the action table (the one source, as
/openapi.json is): one static HTML page the daemon serves at /docs without a key (no script,
nothing from elsewhere, nothing secret), the same content as Markdown (docs/api.md, written by
tools/apiref.py), and the summary table docs/interworx.md embeds; tests/unit/test_docs.py keeps the
files in step."""
from __future__ import annotations

import html
import re
from dataclasses import dataclass

from imapd_ctl import __version__
from imapd_ctl.core.actions import ACTIONS, CONTROLLERS, IMAP, PERMISSION, Action, Input
from imapd_ctl.transports.openapi import ERRORS

# Action.returns in words.
PAYLOAD_WORDS = {
    "boolean": "true or false",
    "string": "a string",
    "integers": "an array of integers",
    "strings": "an array of strings",
    "service_info": "an object: id, name, ports, page, ctrl, is_running (0 or 1)",
    "message": "a sentence saying what was done (update with dry_run=1: the unified diff); with "
               "cascade_to_nodes=1 an array of every node's {id, status, payload}, this node first",
    "values": "an object of the four update inputs and their current values",
    "start_on_boot": "an object: mda_imap_startonboot, 0 or 1",
    "capacity": "an object: per port the connections in use, the limit and the headroom; the pools, "
                "the units' health, the saturation signals and a summary",
}

INTRO = (
    "Every action answers the envelope {\"status\": 0, \"payload\": ...}: status 0 and the result, or "
    "the HTTP status and a sentence saying what was wrong. Read-only actions answer GET and POST, the "
    "others POST only. Inputs travel as JSON, as a form, or (GET) in the query string; an input the "
    "action does not have is refused (400). The key goes in `Authorization: Bearer KEY` (keys: "
    f"`imapd-ctl key create NAME`, with the {PERMISSION} permission); on the unix socket root needs "
    "none. InterWorx clients call the same actions over XML-RPC (/xmlrpc, iworx.route) and SOAP "
    "(/soap, route), the key in the call; there, inputs an action does not have are ignored, as "
    "InterWorx does.")

OTHERS = [
    ("GET /healthz", "the daemon answers: {\"status\": 0, \"payload\": \"ok\"}; no key"),
    ("GET /metrics", "Prometheus' text format; who may read it is the metrics_access setting"),
    ("POST /xmlrpc", "XML-RPC: iworx.route(apikey, controller, action, inputs)"),
    ("GET /soap?wsdl, POST /soap", "the WSDL, and SOAP 1.1/1.2 route(apikey, ctrl_name, action, input)"),
    ("GET /openapi.json", "OpenAPI 3.0 of every action; no key"),
    ("GET /docs", "this page; no key"),
]


@dataclass(frozen=True)
class Row:
    name: str
    allowed: str
    default: str
    description: str


def _rows(action: Action) -> list[Row]:
    def default(i: Input) -> str:
        if i.default is not None:
            return str(i.default)
        return "this node" if i.name == "node_id" else "kept as it is"
    return [Row(i.name, i.allowed(), default(i), i.description) for i in action.inputs]


def _example(action: Action) -> str:
    url = f"http://localhost{IMAP.path}/{action.name}"
    data = " ".join(f"-d {i.name}={i.example.split(',')[0].strip() or '1'}" for i in action.inputs
                    if i.example and not i.routing)
    method = "-X POST " if action.mutating and not data else ""
    return (f"curl -s --unix-socket /run/imapd-ctl/imapd-ctl.sock -H 'Authorization: Bearer KEY' "
            f"{method}{data + ' ' if data else ''}{url}")


def _controllers() -> list[tuple[str, str, str]]:
    return [(s.path, s.service_id, "993 (IMAP over TLS)" if s.secure else "143") for s in CONTROLLERS.values()]


# -- Markdown ------------------------------------------------------------------------------------

def _input_brief(spec: Input) -> str:
    allowed = (f"{spec.minimum}–{spec.maximum}" if spec.kind == "int" else f"`{spec.pattern}`")
    default = "" if spec.default is None else f", default {spec.default}"
    return f"`{spec.name}` ({spec.kind} {allowed}{default})"


def summary() -> str:
    """The controllers and actions at a glance (docs/interworx.md embeds it)."""
    rows = ["| action | method | inputs | what it does |", "|---|---|---|---|"]
    for a in ACTIONS.values():
        inputs = ", ".join(_input_brief(i) for i in a.inputs) or "–"
        rows.append(f"| `{a.name}` | {' '.join(a.methods)} | {inputs} | {a.description} |")
    services = ["| controller | InterWorx name | service id | port (setting) | page |", "|---|---|---|---|---|"]
    for c in CONTROLLERS.values():
        port = "993 (`ssl_port`)" if c.secure else "143 (`port`)"
        services.append(f"| `{c.path}` | {c.title} | `{c.service_id}` | {port} | `{c.page}` |")
    where = " and ".join(f"`{c.path}/<action>`" for c in CONTROLLERS.values())
    return ("\n".join(services) + f"\n\nEvery controller has every action, under {where}.\n\n"
            + "\n".join(rows) + "\n")


def markdown() -> str:
    out = [f"# imapd-ctl API reference ({__version__})", "",
           "Made from the action table (`imapd_ctl/core/actions.py`) by `tools/apiref.py`; the daemon "
           "serves the same as one HTML page at `/docs` and as OpenAPI at `/openapi.json`.", "",
           INTRO, "", "| controller | service | port |", "|---|---|---|"]
    out += [f"| `{path}` | {sid} | {port} |" for path, sid, port in _controllers()]
    out += ["", "Both controllers have every action below; simap's act on the unit serving port 993.", ""]
    for action in ACTIONS.values():
        out += [f"## {action.name}", "", action.description, "",
                f"- Methods: {', '.join(action.methods)}" + (" (changes the server)" if action.mutating else ""),
                f"- Added in: {action.added_in}", f"- Payload: {PAYLOAD_WORDS[action.returns]}"]
        rows = _rows(action)
        if rows:
            out += ["", "| input | allowed | absent | description |", "|---|---|---|---|"]
            out += [f"| `{r.name}` | {r.allowed.replace('|', chr(92) + '|')} | {r.default} | {r.description} |"
                    for r in rows]
        out += ["", "```sh", _example(action), "```", ""]
    out += ["## Errors", "", "| status | meaning |", "|---|---|"]
    out += [f"| {code} | {why} |" for code, (_, why) in ERRORS.items()]
    out += ["", "## Other endpoints", "", "| endpoint | what |", "|---|---|"]
    out += [f"| `{what}` | {why} |" for what, why in OTHERS]
    return "\n".join(out) + "\n"


# -- HTML ----------------------------------------------------------------------------------------

_STYLE = ("body{font:15px/1.5 system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em;color:#222}"
          "code,pre{font-family:ui-monospace,monospace;background:#f4f4f4}pre{padding:.6em;overflow-x:auto}"
          "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.3em .6em;"
          "text-align:left;vertical-align:top}h2{border-top:1px solid #ddd;padding-top:1em}"
          "nav a{margin-right:.6em}")


def _inline(text: str) -> str:
    """Escaped, with Markdown's `code` spans as <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _table(head: list[str], rows: list[list[str]]) -> str:
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{cells}</tr>{body}</table>"


def page() -> str:
    esc = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>imapd-ctl API reference {esc(__version__)}</title>",
             f"<style>{_STYLE}</style></head><body>",
             f"<h1>imapd-ctl API reference <small>{esc(__version__)}</small></h1>",
             f"<p>{_inline(INTRO)}</p>",
             _table(["controller", "service", "port"], [list(c) for c in _controllers()]),
             "<p>Both controllers have every action below; simap's act on the unit serving port 993. "
             'Also: <a href="/openapi.json">/openapi.json</a>.</p>',
             "<nav>" + " ".join(f'<a href="#{a.name}">{a.name}</a>' for a in ACTIONS.values()) + "</nav>"]
    for action in ACTIONS.values():
        parts += [f'<h2 id="{action.name}">{esc(action.name)}</h2>', f"<p>{esc(action.description)}</p>",
                  "<ul>",
                  f"<li>Methods: {esc(', '.join(action.methods))}"
                  + (" (changes the server)" if action.mutating else "") + "</li>",
                  f"<li>Added in: {esc(action.added_in)}</li>",
                  f"<li>Payload: {esc(PAYLOAD_WORDS[action.returns])}</li></ul>"]
        rows = _rows(action)
        if rows:
            parts.append(_table(["input", "allowed", "absent", "description"],
                                [[r.name, r.allowed, r.default, r.description] for r in rows]))
        parts.append(f"<pre>{esc(_example(action))}</pre>")
    parts += ["<h2>Errors</h2>", _table(["status", "meaning"], [[c, why] for c, (_, why) in ERRORS.items()]),
              "<h2>Other endpoints</h2>", _table(["endpoint", "what"], [list(o) for o in OTHERS]),
              "</body></html>"]
    return "\n".join(parts) + "\n"
