"""The hostile SOAP calls of the e2e hostile-input test (tests/e2e/hostile_soap.py), here through
Flask's test client with the real wiring and fakes (fast; the e2e test sends them through
gunicorn to a real host): every reply an in-band 4xx answer or a Fault, as the case calls for,
and nothing asked of systemd or the IMAP server's configuration."""
import os

from hypothesis import HealthCheck, given, note, settings, strategies as st

from hostile_soap import check_soap, soap_case
from test_hostile_input import Ctx
from imapd_ctl.core.actions import ACTIONS

# Cases over all actions together (the e2e test runs each action's own).
EXAMPLES = int(os.environ.get("IMAPD_CTL_HOSTILE_EXAMPLES", "100"))


def test_hostile_soap_calls_are_refused_and_change_nothing(env):
    ctx = Ctx(env.key, env.settings.node_id)
    seen = set()

    @settings(max_examples=EXAMPLES, deadline=None, database=None, print_blob=False,
              suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(list(ACTIONS)).flatmap(lambda name: soap_case(ACTIONS[name], ctx)))
    def one(case):
        wire = case.http()
        headers = {"Content-Type": wire.ctype} if wire.ctype else {}
        reply = env.client.post(case.path, data=case.body, headers=headers)
        note(f"reply: HTTP {reply.status_code} {reply.get_data()[:600]!r}")
        check_soap(case, reply.status_code, reply.content_type, reply.get_data())
        seen.add(case.family.split("/")[0])
        assert env.systemd.jobs == [] and env.flavour.events == []

    one()
    assert len(seen) >= 12, seen     # the generator reaches the families
