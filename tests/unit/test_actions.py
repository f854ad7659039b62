"""The action table (imapd_ctl.core.actions): the seed controller's actions, strict inputs,
and the binding of each action to its handler (imapd_ctl.operations.controller.HANDLERS)."""
import inspect

import pytest

from imapd_ctl.operations.controller import HANDLERS
from imapd_ctl.core.actions import (
    ACTIONS, CONN_MAX, CONN_MIN, CONTROLLER, MEM_MAX, MEM_MIN, PERMISSION, lookup,
)
from imapd_ctl.core.errors import BadInput, NotFound

CASCADE = "cascade_to_nodes"
# Transcribed from seed/nodeworx-mail-imap-controller.txt: action -> (added in, inputs, description).
SEED = {
    "isRunning": ("4.2.0-260", [], "Checks if the service is running or not."),
    "isRunningOnNode": ("4.3.0-290", ["node_id"],
                        "Checks if the service is running on a specific node (Clustering only)."),
    "listGeneralName": ("4.2.0-260", [], 'Lists the "normal" name - ie "web server" instead of "httpd".'),
    "listPortNumbers": ("4.2.0-260", [],
                        "Lists a string of the port numbers that this service uses, comma-seperated."),
    "listPortNumbersArray": ("4.2.0-260", [], "Lists array of port numbers and ranges that this service uses."),
    "listRequiredPermissions": ("4.2.0-260", [], "Lists an array of permissions required to control the service."),
    "listServiceInfo": ("4.2.0-260", [], "Lists the service name, ports, page, and status."),
    "listServiceName": ("4.2.0-260", [], 'Lists the service name - ie "httpd" instead of "web server".'),
    "listServicePage": ("4.2.0-260", [], "Lists the page that controls the service."),
    "restart": ("4.2.0-260", [CASCADE], "Restarts the service."),
    "restartOnNode": ("4.3.0-290", ["node_id"], "Restarts the service on a specific node (Clustering only)."),
    "start": ("4.2.0-260", [CASCADE], "Starts the service."),
    "startOnBoot": ("4.2.0-260", ["mda_imap_startonboot", CASCADE],
                    "Action function that handles imap4 start-on-boot status changing."),
    "startOnNode": ("4.3.0-290", ["node_id"], "Starts the service on a specific node (Clustering only)."),
    "stop": ("4.2.0-260", [CASCADE], "Stops the service."),
    "stopOnNode": ("4.3.0-290", ["node_id"], "Stops the service on a specific node (Clustering only)."),
    "update": ("4.2.0-260", ["imap_mem_limit", "imap_max_connections", "imap_secure_mem_limit",
                             "imap_secure_max_connections", CASCADE], "Update IMAP4 server settings."),
}
EXTENSIONS = {"queryUpdate", "queryStartOnBoot", "queryCapacity"}
READ_ONLY = {"isRunning", "isRunningOnNode", "listGeneralName", "listPortNumbers", "listPortNumbersArray",
             "listRequiredPermissions", "listServiceInfo", "listServiceName", "listServicePage"}
# The seed marks these "No*": required, but with a usable default.
STARRED = {"node_id", "mda_imap_startonboot", "imap_mem_limit", "imap_max_connections",
           "imap_secure_mem_limit", "imap_secure_max_connections"}


# --- the table -----------------------------------------------------------------------

def test_table_is_the_seed_plus_the_query_extensions():
    assert len(SEED) == 17
    assert set(ACTIONS) == set(SEED) | EXTENSIONS
    assert CONTROLLER == "/nodeworx/mail/imap"
    assert PERMISSION == "EMAIL"


@pytest.mark.parametrize("name", sorted(SEED))
def test_seed_action_matches_the_seed(name):
    added_in, inputs, description = SEED[name]
    action = ACTIONS[name]
    assert action.name == name
    assert action.added_in == added_in
    assert action.description == description
    assert not action.extension
    seed_inputs = [i.name for i in action.inputs if i.name != "dry_run"]  # dry_run: documented extension
    assert seed_inputs == inputs
    assert {i.name for i in action.inputs if i.starred} == STARRED & set(inputs)


def test_only_update_has_an_extra_input():
    extras = {name: [i.name for i in a.inputs if i.name not in SEED[name][1]]
              for name, a in ACTIONS.items() if name in SEED}
    assert {n: e for n, e in extras.items() if e} == {"update": ["dry_run"]}


@pytest.mark.parametrize("name", sorted(EXTENSIONS))
def test_query_extensions_are_read_only_without_inputs(name):
    action = ACTIONS[name]
    assert action.extension
    assert not action.mutating
    assert action.inputs == ()


def test_read_only_and_mutating_split():
    assert {n for n, a in ACTIONS.items() if not a.mutating} == READ_ONLY | EXTENSIONS
    for name, action in ACTIONS.items():
        expected = ("GET", "POST") if name in READ_ONLY | EXTENSIONS else ("POST",)
        assert action.methods == expected, name


def test_every_action_has_a_handler_or_a_local_action():
    for name, action in ACTIONS.items():
        if name.endswith("OnNode"):
            assert name not in HANDLERS
            assert action.local_action == name[:-len("OnNode")]
            assert ACTIONS[action.local_action].mutating == action.mutating
        else:
            assert HANDLERS[name] and action.local_action is None


def test_handlers_cover_exactly_the_actions_that_run_here():
    assert set(HANDLERS) == {name for name, action in ACTIONS.items() if action.local_action is None}


@pytest.mark.parametrize("name", sorted(HANDLERS))
def test_each_handler_takes_its_action_inputs_by_name(name):
    """The controller calls handler(controller, **inputs): its parameters (after self) are
    the action's inputs but the routing ones, in the table's order, with no defaults."""
    params = list(inspect.signature(HANDLERS[name]).parameters.values())
    assert params[0].name == "self"
    assert [p.name for p in params[1:]] == list(ACTIONS[name].handler_inputs)
    assert all(p.kind is p.POSITIONAL_OR_KEYWORD and p.default is p.empty for p in params[1:])


def test_routing_inputs_are_the_controllers():
    for action in ACTIONS.values():
        routing = {i.name for i in action.inputs if i.routing}
        assert routing <= {"cascade_to_nodes", "node_id"}, action.name
        assert set(action.handler_inputs) == {i.name for i in action.inputs} - routing


def test_seed_defaults():
    update = ACTIONS["update"]
    for name in ("imap_mem_limit", "imap_max_connections", "imap_secure_mem_limit",
                 "imap_secure_max_connections"):
        assert update.input(name).default is None  # left out: keep the current value
    assert update.input("imap_mem_limit").example == "256000000"
    assert update.input("imap_max_connections").example == "40"
    assert ACTIONS["startOnBoot"].input("mda_imap_startonboot").default == 1
    assert ACTIONS["restart"].input(CASCADE).default == 0
    assert ACTIONS["isRunningOnNode"].input("node_id").default is None  # the local node


# --- Input.parse: integers ---------------------------------------------------------------

CONN = ACTIONS["update"].input("imap_max_connections")
MEM = ACTIONS["update"].input("imap_mem_limit")
BOOT = ACTIONS["startOnBoot"].input("mda_imap_startonboot")


@pytest.mark.parametrize("raw, expected", [
    (40, 40), ("40", 40), (CONN_MIN, CONN_MIN), (CONN_MAX, CONN_MAX), (str(CONN_MAX), CONN_MAX), ("0040", 40),
])
def test_int_accepts_ints_and_ascii_digit_strings(raw, expected):
    value = CONN.parse(raw)
    assert value == expected
    assert type(value) is int


def test_int_mem_limits_bounds():
    assert MEM.parse(MEM_MIN) == MEM_MIN == 1 << 20
    assert MEM.parse(str(MEM_MAX)) == MEM_MAX
    assert MEM.parse("256000000") == 256000000
    assert BOOT.parse(0) == 0 and BOOT.parse("1") == 1


@pytest.mark.parametrize("raw", [
    True, False, 40.0, 1e3, "4.0", "", " 40", "40 ", "40\n", "\n40", "+40", "４０", "٤٠", "1e3", "0x10",
    "4_0", "forty", None, [40], ["40"], {"value": 40}, b"40",
])
def test_int_rejects_non_integers(raw):
    with pytest.raises(BadInput) as err:
        CONN.parse(raw)
    assert err.value.status == 400
    message = err.value.message
    assert message.startswith("imap_max_connections: ")
    assert f"an integer from {CONN_MIN} to {CONN_MAX}" in message


@pytest.mark.parametrize("spec, raw", [
    (CONN, 0), (CONN, "0"), (CONN, -1), (CONN, "-40"), (CONN, CONN_MAX + 1), (CONN, str(CONN_MAX + 1)),
    (CONN, 10 ** 30), (CONN, "9" * 30), (CONN, "9" * 31),
    (MEM, MEM_MIN - 1), (MEM, MEM_MAX + 1), (MEM, str(MEM_MAX + 1)), (MEM, 0),
    (BOOT, 2), (BOOT, -1), (BOOT, "2"),
])
def test_int_rejects_out_of_range_naming_field_and_range(spec, raw):
    with pytest.raises(BadInput) as err:
        spec.parse(raw)
    message = err.value.message
    assert message.startswith(f"{spec.name}: must be an integer from {spec.minimum} to {spec.maximum}")


def test_bool_is_named_as_wrong_type():
    with pytest.raises(BadInput, match=r"cascade_to_nodes: .*wrong type bool"):
        ACTIONS["restart"].input(CASCADE).parse(True)


def test_long_rejected_value_is_shortened_in_the_message():
    with pytest.raises(BadInput) as err:
        CONN.parse("x" * 500)
    assert "x" * 50 not in err.value.message
    assert "..." in err.value.message


# --- Input.parse: node_id ----------------------------------------------------------------

NODE = ACTIONS["startOnNode"].input("node_id")


@pytest.mark.parametrize("raw", ["mail1", "a", "node-2.example_3", "N" * 64])
def test_node_id_accepts_host_like_names(raw):
    assert NODE.parse(raw) == raw


@pytest.mark.parametrize("raw", [
    "", "mail1\n", "mail\n1", "\nmail1", "mail{1}", "mail}", "mail\x001", "N" * 65, "-mail", ".mail",
    "mail 1", "mäil", "mail/../x", 1, None, ["mail1"],
])
def test_node_id_rejects_anything_else(raw):
    with pytest.raises(BadInput) as err:
        NODE.parse(raw)
    assert err.value.message.startswith("node_id: must be a string matching ")


# --- Action.validate ------------------------------------------------------------------------

def test_validate_ignores_unknown_keys_by_default():
    values = ACTIONS["update"].validate({"imap_max_connections": "50", "perms": ["EMAIL"], "junk": 1})
    assert values == {"imap_mem_limit": None, "imap_max_connections": 50, "imap_secure_mem_limit": None,
                      "imap_secure_max_connections": None, "cascade_to_nodes": 0, "dry_run": 0}


def test_validate_fills_defaults():
    assert ACTIONS["startOnBoot"].validate({}) == {"mda_imap_startonboot": 1, "cascade_to_nodes": 0}
    assert ACTIONS["isRunning"].validate({"perms": "x"}) == {}
    assert ACTIONS["stopOnNode"].validate({}) == {"node_id": None}


def test_validate_strict_names_unknown_keys():
    with pytest.raises(BadInput) as err:
        ACTIONS["update"].validate({"imap_max_conections": "50", "perms": "x"}, strict=True)
    message = err.value.message
    assert "imap_max_conections" in message and "perms" in message
    assert "imap_max_connections" in message  # lists the real inputs


def test_validate_strict_for_an_action_without_inputs():
    with pytest.raises(BadInput, match="node_id"):
        ACTIONS["isRunning"].validate({"node_id": "x"}, strict=True)
    assert ACTIONS["isRunning"].validate({}, strict=True) == {}


def test_validate_strict_accepts_known_keys():
    assert ACTIONS["stop"].validate({"cascade_to_nodes": "1"}, strict=True) == {"cascade_to_nodes": 1}


def test_validate_reports_the_bad_field():
    with pytest.raises(BadInput, match=r"^imap_secure_mem_limit: "):
        ACTIONS["update"].validate({"imap_max_connections": "5", "imap_secure_mem_limit": "1e9"})


# --- lookup ---------------------------------------------------------------------------------

def test_lookup_finds_every_action():
    for name, action in ACTIONS.items():
        assert lookup(name) is action


@pytest.mark.parametrize("name", ["isrunning", "IsRunning", "", "nope", " isRunning", "isRunning/",
                                  None, 1, ["isRunning"], "__class__"])
def test_lookup_unknown_raises_not_found(name):
    with pytest.raises(NotFound) as err:
        lookup(name)
    assert err.value.status == 404
    assert "unknown action" in err.value.message
