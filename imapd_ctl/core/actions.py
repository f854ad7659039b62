"""The action table: every action of the controllers served (/nodeworx/mail/imap and its
secure-IMAP sibling /nodeworx/mail/simap), declared once.

HTTP routing, input validation, XML-RPC dispatch, /openapi.json and `imapd-ctl call`
are all derived from ACTIONS and CONTROLLERS; nothing else lists actions, inputs or controllers.
Every controller has every action: they differ only in the service they describe and act on
(`Service`: which port, and so which units).
"""
from __future__ import annotations

import functools

import re
import reprlib
from dataclasses import dataclass
from typing import Any, Mapping

from imapd_ctl.core.errors import BadInput, NotFound

PERMISSION = "EMAIL"
METRICS_PERMISSION = "METRICS"    # reads /metrics when metrics_access = "key"
# Every permission a key may hold, and what it allows (keys are made with these only).
PERMISSIONS = {PERMISSION: "call every action (InterWorx's permission for mail)",
               METRICS_PERMISSION: 'read /metrics where metrics_access = "key"'}

# Byte sizes: at least 1 MiB (Dovecot refuses a smaller vsz_limit), at most 1 TiB.
# Above 2**31-1 an XML-RPC client must send the number as a string (i4 limit).
MEM_MIN, MEM_MAX = 1 << 20, 1 << 40
CONN_MIN, CONN_MAX = 1, 50_000

_INT_TEXT = re.compile(r"-?[0-9]{1,30}", re.ASCII)

_NESTED = reprlib.Repr()
_NESTED.maxlevel = 3


def brief(raw: Any, limit: int) -> str:
    """repr() of a value from a request, for an error message, cut to `limit` characters.
    repr() of a giant int raises ValueError (Python's digit limit), and of an array nested a
    thousand deep (XML-RPC, or JSON near the parser's limit) RecursionError: never repr those."""
    if raw is True or raw is False or raw is None:     # as JSON and the InterWorx docs spell them
        shown = {True: "true", False: "false", None: "null"}[raw]
    elif isinstance(raw, int) and raw.bit_length() > 128:
        shown = f"an integer of {raw.bit_length()} bits"
    else:
        try:
            shown = repr(raw)
        except RecursionError:
            shown = _NESTED.repr(raw)
    return shown if len(shown) <= limit else shown[:limit - 3] + "..."


@dataclass(frozen=True)
class Input:
    name: str
    kind: str                      # "int" or "str"
    description: str = ""
    minimum: int | None = None
    maximum: int | None = None
    pattern: str | None = None     # for kind "str"; anchored
    default: Any = None            # None: "keep the current value" / "local node"
    example: str = ""
    starred: bool = False          # the seed's "No*": required, but has a usable default
    routing: bool = False          # where the action runs (cascade, node): the controller's, not the handler's

    def allowed(self) -> str:
        if self.kind == "int":
            return f"an integer from {self.minimum} to {self.maximum}"
        return f"a string matching {self.pattern}"

    @property
    def flag(self) -> bool:
        """A 0/1 input (startOnBoot, cascade_to_nodes, dry_run)."""
        return self.kind == "int" and (self.minimum, self.maximum) == (0, 1)

    def parse(self, raw: Any, *, booleans: bool = False) -> Any:
        """Strictly convert one raw value (from JSON, a form, a query string, XML-RPC or SOAP).
        With `booleans` (a transport whose boolean is a type of its own and PHP's `true`), a
        boolean is 1/0 for a flag; everywhere else a boolean is refused."""
        if booleans and self.flag and isinstance(raw, bool):
            return int(raw)
        if self.kind == "int":
            return self._parse_int(raw)
        return self._parse_str(raw)

    def _fail(self, raw: Any, why: str = "") -> BadInput:
        why = f" ({why})" if why else ""
        return BadInput(f"{self.name}: must be {self.allowed()}, got {brief(raw, 40)}{why}")

    def _parse_int(self, raw: Any) -> int:
        # bool is an int subclass in Python: True must not become 1.
        if isinstance(raw, bool) or not isinstance(raw, (int, str)):
            raise self._fail(raw, f"wrong type {type(raw).__name__}")
        if isinstance(raw, str):
            # ASCII digits only: int('４０') would be 40.
            if not _INT_TEXT.fullmatch(raw):
                raise self._fail(raw)
            raw = int(raw)
        if not self.minimum <= raw <= self.maximum:
            raise self._fail(raw, "out of range")
        return raw

    def _parse_str(self, raw: Any) -> str:
        if not isinstance(raw, str):
            raise self._fail(raw, f"wrong type {type(raw).__name__}")
        if self.pattern is None or not re.fullmatch(self.pattern, raw, re.ASCII):
            raise self._fail(raw)
        return raw


@dataclass(frozen=True)
class Action:
    name: str
    description: str
    added_in: str
    inputs: tuple[Input, ...] = ()
    mutating: bool = False
    extension: bool = False        # not in the seed controller (query*, dry_run)
    local_action: str | None = None  # *OnNode: the action it runs on the chosen node
    # What its payload is (a schema of transports.openapi.PAYLOADS): "message" is a sentence,
    # or with cascade_to_nodes=1 every node's outcome.
    returns: str = "message"
    # Which code runs an action is not data of this table: operations.controller.HANDLERS
    # binds each action (but the *OnNode ones) to its handler, and a test keeps the two in step.

    @functools.cached_property      # asked on every call: worked out once per action
    def methods(self) -> tuple[str, ...]:
        return ("POST",) if self.mutating else ("GET", "POST")

    @functools.cached_property
    def handler_inputs(self) -> tuple[str, ...]:
        """The inputs its handler takes as named parameters: all but the routing ones, which
        the controller acts on itself (cascade_to_nodes, node_id)."""
        return tuple(i.name for i in self.inputs if not i.routing)

    def input(self, name: str) -> Input | None:
        return next((i for i in self.inputs if i.name == name), None)

    def validate(self, raw: Mapping[str, Any], *, strict: bool = False, booleans: bool = False) -> dict[str, Any]:
        """Parse the inputs this action knows; others are ignored (InterWorx's XML-RPC and SOAP
        clients send extra keys such as ``perms``) unless ``strict`` (the native HTTP API and
        the CLI, where a typo must not pass silently: refused once the known inputs are valid).
        Absent inputs get their default (None = keep current). `booleans`: see Input.parse."""
        values: dict[str, Any] = {}
        for spec in self.inputs:
            values[spec.name] = spec.parse(raw[spec.name], booleans=booleans) if spec.name in raw else spec.default
        if strict and raw:
            unknown = sorted(set(raw) - {i.name for i in self.inputs})
            if unknown:
                known = ", ".join(i.name for i in self.inputs) or "none"
                raise BadInput(f"{', '.join(map(str, unknown))}: not an input of {self.name} (its inputs: {known}); "
                               "nothing was changed")
        return values


_CASCADE = Input(
    "cascade_to_nodes", "int", minimum=0, maximum=1, default=0, example="1", routing=True,
    description="Selecting this option causes the action to be replayed on all nodes of the "
                "cluster automatically, as if you had logged in to each node manually",
)
_NODE_ID = Input(
    "node_id", "str", pattern=r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", starred=True, routing=True,
    description="The node to act on; defaults to this node.",
)


def _mem(name: str, where: str) -> Input:
    return Input(name, "int", minimum=MEM_MIN, maximum=MEM_MAX, starred=True, example="256000000",
                 description=f"(In Bytes) The most memory one IMAP process {where} may use.")


def _conn(name: str, where: str) -> Input:
    return Input(name, "int", minimum=CONN_MIN, maximum=CONN_MAX, starred=True, example="40",
                 description=f"The most IMAP connections {where} at once.")


UPDATE_FIELDS = ("imap_mem_limit", "imap_max_connections",
                 "imap_secure_mem_limit", "imap_secure_max_connections")

_V = "4.2.0-260"
_V_NODE = "4.3.0-290"

ACTIONS: dict[str, Action] = {a.name: a for a in (
    Action("isRunning", "Checks if the service is running or not.", _V, returns="boolean"),
    Action("isRunningOnNode", "Checks if the service is running on a specific node (Clustering only).",
           _V_NODE, (_NODE_ID,), local_action="isRunning", returns="boolean"),
    Action("listGeneralName", 'Lists the "normal" name - ie "web server" instead of "httpd".', _V,
           returns="string"),
    Action("listPortNumbers", "Lists a string of the port numbers that this service uses, comma-seperated.",
           _V, returns="string"),
    Action("listPortNumbersArray", "Lists array of port numbers and ranges that this service uses.", _V,
           returns="integers"),
    Action("listRequiredPermissions", "Lists an array of permissions required to control the service.", _V,
           returns="strings"),
    Action("listServiceInfo", "Lists the service name, ports, page, and status.", _V, returns="service_info"),
    Action("listServiceName", 'Lists the service name - ie "httpd" instead of "web server".', _V,
           returns="string"),
    Action("listServicePage", "Lists the page that controls the service.", _V, returns="string"),
    Action("restart", "Restarts the service.", _V, (_CASCADE,), mutating=True),
    Action("restartOnNode", "Restarts the service on a specific node (Clustering only).", _V_NODE,
           (_NODE_ID,), mutating=True, local_action="restart"),
    Action("start", "Starts the service.", _V, (_CASCADE,), mutating=True),
    Action("startOnBoot", "Action function that handles imap4 start-on-boot status changing.", _V,
           (Input("mda_imap_startonboot", "int", minimum=0, maximum=1, default=1, example="1, 0",
                  starred=True, description="1 enables the IMAP server at boot, 0 disables it."),
            _CASCADE), mutating=True),
    Action("startOnNode", "Starts the service on a specific node (Clustering only).", _V_NODE,
           (_NODE_ID,), mutating=True, local_action="start"),
    Action("stop", "Stops the service.", _V, (_CASCADE,), mutating=True),
    Action("stopOnNode", "Stops the service on a specific node (Clustering only).", _V_NODE,
           (_NODE_ID,), mutating=True, local_action="stop"),
    Action("update", "Update IMAP4 server settings.", _V,
           (_mem("imap_mem_limit", "serving port 143"), _conn("imap_max_connections", "on port 143"),
            _mem("imap_secure_mem_limit", "serving port 993 (IMAP over TLS)"),
            _conn("imap_secure_max_connections", "on port 993 (IMAP over TLS)"),
            _CASCADE,
            Input("dry_run", "int", minimum=0, maximum=1, default=0, example="1",
                  description="1 returns the configuration diff and changes nothing (imapd-ctl extension).")),
           mutating=True),
    Action("queryUpdate", "Current values of the update action's inputs (imapd-ctl extension).",
           "imapd-ctl 0.1", extension=True, returns="values"),
    Action("queryStartOnBoot", "Current value of startOnBoot's input (imapd-ctl extension).",
           "imapd-ctl 0.1", extension=True, returns="start_on_boot"),
    Action("queryCapacity", "Per port: connections in use, the limit in force and the headroom, with "
           "the server's own saturation signals (imapd-ctl extension).", "imapd-ctl 0.1", extension=True,
           returns="capacity"),
)}


@dataclass(frozen=True)
class Service:
    """One InterWorx service controller. `secure`: it is the IMAP-over-TLS service (port 993,
    settings.ssl_port, the units serving it); otherwise plain IMAP (143, settings.port)."""
    path: str            # the controller, as HTTP routes it and XML-RPC/SOAP name it (ctrl_name)
    title: str           # InterWorx's controller class name
    service_id: str      # listServiceName, listServiceInfo's id
    general_name: str    # listGeneralName: InterWorx's language token
    page: str            # listServicePage
    secure: bool

    @property
    def label(self) -> str:
        """Its short name ("imap", "simap"): the controller label of /metrics' series."""
        return self.path.rsplit("/", 1)[1]


IMAP = Service("/nodeworx/mail/imap", "MailImap", "imap4", "##LG_IMAP##", "/nodeworx/mail/mda", secure=False)
SIMAP = Service("/nodeworx/mail/simap", "MailSimap", "imap4-ssl", "##LG_SIMAP##", "/nodeworx/mail/mda",
                secure=True)
CONTROLLERS: dict[str, Service] = {c.path: c for c in (IMAP, SIMAP)}
CONTROLLER = IMAP.path      # the default controller (a Request that names none; the CLI)


def controller(path: Any) -> Service:
    service = CONTROLLERS.get(path) if isinstance(path, str) else None
    if service is None:
        raise NotFound(f"unknown controller {brief(path, 60)}; this server serves {', '.join(CONTROLLERS)}")
    return service


def lookup(name: Any, service: Service = IMAP) -> Action:
    action = ACTIONS.get(name) if isinstance(name, str) else None
    if action is None:
        raise NotFound(f"unknown action {brief(name, 60)} for {service.path}; actions: {', '.join(ACTIONS)}")
    return action
