"""The request pipeline (imapd_ctl.core.dispatch) on its own, with recording stand-ins for the
key store and the audit trail (fakes.py) and the controller: one authentication per request, inputs read
only for a caller with a valid key, every mutating call audited, never an exception."""
import grp
import os

import pytest
from fakes import FakeAudit, FakeKeyStore

from imapd_ctl.core.actions import CONTROLLER, CONTROLLERS, IMAP, PERMISSION, SIMAP
from imapd_ctl.adapters import peers
from imapd_ctl.core.dispatch import Context, dispatch
from imapd_ctl.core.errors import ActionFailed, BadInput, Unauthorized
from imapd_ctl.core.protocols import Principal
from imapd_ctl.core.request import Request, Result

KEY = "good-key"


class Runner:
    def __init__(self, outcome="done"):
        self.outcome, self.ran = outcome, []

    def run(self, action, values, service=IMAP):
        self.ran.append((action.name, values) if service == IMAP else (service.path, action.name, values))
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


@pytest.fixture
def ctx():
    return Context(keys=FakeKeyStore(KEY), audit=FakeAudit(), runner=Runner())


def request(action="restart", key=KEY, inputs=None, **kw):
    reads = []

    def read_inputs():
        reads.append(1)
        if isinstance(inputs, Exception):
            raise inputs
        return inputs
    req = Request(transport="test", peer="here", action=action, read_key=lambda: key,
                  read_inputs=read_inputs, **kw)
    return req, reads


def test_a_call_runs_once_authenticated_and_audited(ctx):
    req, reads = request(inputs={"cascade_to_nodes": "0", "perms": "x"})
    assert dispatch(req, ctx) == Result(0, "done")
    assert ctx.keys.asked == 1 and reads == [1]
    assert ctx.runner.ran == [("restart", {"cascade_to_nodes": 0})]
    assert ctx.audit.lines == [{"who": "panel", "peer": "here", "transport": "test", "controller": CONTROLLER,
                                "action": "restart", "inputs": {"cascade_to_nodes": 0}, "status": 0,
                                "payload": "done"}]


def test_a_caller_the_server_already_checked_is_not_looked_up_again(ctx):
    req, _ = request(key="not asked", inputs={}, caller=Principal("gated", (PERMISSION,)))
    assert dispatch(req, ctx) == Result(0, "done")
    assert ctx.keys.asked == 0 and ctx.audit.lines[-1]["who"] == "gated"


def test_the_controller_named_is_the_one_run_and_audited(ctx):
    req, _ = request(controller="/nodeworx/mail/simap", inputs={"mda_imap_startonboot": 0}, action="startOnBoot")
    assert dispatch(req, ctx) == Result(0, "done")
    assert ctx.runner.ran == [(SIMAP.path, "startOnBoot", {"mda_imap_startonboot": 0, "cascade_to_nodes": 0})]
    assert [(l["controller"], l["action"]) for l in ctx.audit.lines] == [(SIMAP.path, "startOnBoot")]


@pytest.mark.parametrize("kw, status", [
    ({"controller": "/nodeworx/mail/pop3"}, 404),
    ({"controller": "/nodeworx/mail/simap/"}, 404),
    ({"controller": ["/nodeworx/mail/simap"]}, 404),
    ({"action": "nope"}, 404),
    ({"method": "GET"}, 405),
    ({"inputs": BadInput("body: not valid JSON")}, 400),
    ({"inputs": ["x"]}, 400),
])
def test_each_refusal_comes_after_one_authentication(ctx, kw, status):
    req, _ = request(**kw)
    assert dispatch(req, ctx).status == status
    assert ctx.keys.asked == 1 and ctx.runner.ran == []
    bad, reads = request(key="wrong", **kw)
    assert dispatch(bad, ctx) == Result(401, "unknown API key")
    assert ctx.keys.asked == 2 and reads == []     # the inputs were never looked at


def test_a_key_that_cannot_be_read_is_401(ctx):
    def refuse():
        raise Unauthorized("only API key authentication is supported")
    req = Request(transport="test", peer="here", action="isRunning", read_key=refuse, controller="/elsewhere")
    assert dispatch(req, ctx) == Result(401, "only API key authentication is supported")


def test_audit_of_failures_and_not_of_reads(ctx):
    dispatch(request(action="isRunning")[0], ctx)
    dispatch(request(action="update", inputs={"imap_max_connections": 0})[0], ctx)
    assert [(l["action"], l["status"], l["who"]) for l in ctx.audit.lines] == [("update", 400, "panel")]
    dispatch(request(action="stop", key="wrong")[0], ctx)    # no action known yet: nothing to audit
    assert len(ctx.audit.lines) == 1


def test_errors_of_the_action_become_results(ctx):
    ctx.runner.outcome = ActionFailed("the job failed", payload={"why": "x"})
    assert dispatch(request()[0], ctx) == Result(500, {"why": "x"})
    ctx.runner.outcome = ZeroDivisionError("oops")
    assert dispatch(request()[0], ctx) == Result(500, "internal error in imapd-ctl: ZeroDivisionError: oops")
    assert [l["status"] for l in ctx.audit.lines] == [500, 500]


def test_http_and_xmlrpc_name_our_controller():
    assert Request(transport="t", peer="p", action="a", read_key=lambda: None).controller == CONTROLLER
    assert list(CONTROLLERS) == ["/nodeworx/mail/imap", "/nodeworx/mail/simap"]


def test_an_unknown_controller_names_the_ones_served(ctx):
    result = dispatch(request(controller="/nodeworx/mail/pop3")[0], ctx)
    assert result == Result(404, "unknown controller '/nodeworx/mail/pop3'; this server serves "
                                 "/nodeworx/mail/imap, /nodeworx/mail/simap")


def test_a_change_is_refused_when_its_audit_line_cannot_be_written(ctx):
    """Fails closed: no begin line, no change; the reply says why, read-only calls go on."""
    ctx = Context(keys=ctx.keys, audit=FakeAudit(broken=True), runner=ctx.runner)
    result = dispatch(request(inputs={"cascade_to_nodes": "0"})[0], ctx)
    assert result.status == 503 and "audit log cannot be written" in result.payload
    assert ctx.runner.ran == []
    assert dispatch(request(action="isRunning")[0], ctx).status == 0
    assert [name for name, _ in ctx.runner.ran] == ["isRunning"]


def test_a_change_is_announced_before_it_runs(ctx):
    class Announcing(Runner):
        def run(self, action, values, service=IMAP):
            assert ctx.audit.begun and ctx.audit.begun[-1]["action"] == action.name
            return super().run(action, values, service)
    ctx = Context(keys=ctx.keys, audit=ctx.audit, runner=Announcing())
    assert dispatch(request()[0], ctx).status == 0
    assert ctx.audit.begun == [{"who": "panel", "peer": "here", "transport": "test", "controller": CONTROLLER,
                                "action": "restart", "inputs": {"cascade_to_nodes": 0}}]


def test_root_on_the_unix_socket_needs_no_key_others_do_and_a_key_given_is_the_key():
    """adapters.peers through dispatch: the kernel's (uid, gid) of a unix-socket caller."""
    ctx = Context(keys=FakeKeyStore(KEY), audit=FakeAudit(), runner=Runner(), operators=peers.operators(""))
    req, _ = request(key=None, inputs={}, peer_cred=(0, 0))
    assert dispatch(req, ctx) == Result(0, "done")
    assert ctx.keys.asked == 0 and ctx.audit.lines[-1]["who"] == "root (uid 0, no key)"
    for cred in ((1000, 1000), None):              # another user; TCP (no credentials)
        req, _ = request(key=None, inputs={}, peer_cred=cred)
        assert dispatch(req, ctx).status == 401
    req, _ = request(key="wrong", inputs={}, peer_cred=(0, 0))
    assert dispatch(req, ctx).status == 401          # root who sends a key is that key


def test_an_operator_group_is_trusted_like_root_and_only_it():
    group = grp.getgrgid(os.getgid()) if os.getgid() != 0 else grp.getgrnam("daemon")
    operators = peers.operators(group.gr_name)
    assert operators(4242, group.gr_gid).name == "uid (uid 4242, no key)"       # its primary group
    assert operators(4242, group.gr_gid).perms == ("EMAIL", "METRICS")
    assert operators(4242, group.gr_gid + 1) is None
    assert peers.operators("")(4242, group.gr_gid) is None
