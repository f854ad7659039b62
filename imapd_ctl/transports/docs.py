"""The action reference in Markdown, generated from the action table (README embeds it;
tests/test_docs.py keeps the two in step). `python -m imapd_ctl.transports.docs` prints it."""
from __future__ import annotations

from imapd_ctl.core.actions import ACTIONS, CONTROLLERS, Input


def _input(spec: Input) -> str:
    allowed = (f"{spec.minimum}–{spec.maximum}" if spec.kind == "int" else f"`{spec.pattern}`")
    default = "" if spec.default is None else f", default {spec.default}"
    return f"`{spec.name}` ({spec.kind} {allowed}{default})"


def markdown() -> str:
    rows = ["| action | method | inputs | what it does |", "|---|---|---|---|"]
    for a in ACTIONS.values():
        inputs = ", ".join(_input(i) for i in a.inputs) or "–"
        rows.append(f"| `{a.name}` | {' '.join(a.methods)} | {inputs} | {a.description} |")
    services = ["| controller | InterWorx name | service id | port (setting) | page |", "|---|---|---|---|---|"]
    for c in CONTROLLERS.values():
        port = "993 (`ssl_port`)" if c.secure else "143 (`port`)"
        services.append(f"| `{c.path}` | {c.title} | `{c.service_id}` | {port} | `{c.page}` |")
    where = " and ".join(f"`{c.path}/<action>`" for c in CONTROLLERS.values())
    return ("\n".join(services) + f"\n\nEvery controller has every action, under {where}.\n\n"
            + "\n".join(rows) + "\n")


if __name__ == "__main__":
    print(markdown(), end="")
