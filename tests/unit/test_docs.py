"""The references made from the action table (transports.reference, transports.openapi): the
summary in docs/interworx.md and docs/api.md are the generated ones; /docs serves the HTML page without a
key; /openapi.json is a valid OpenAPI 3.0 document of every action and endpoint."""
from pathlib import Path

import pytest
from openapi_spec_validator import validate

from imapd_ctl.core.actions import ACTIONS, CONTROLLERS
from imapd_ctl.transports import openapi, reference

ROOT = Path(__file__).resolve().parents[2]


def test_the_interworx_doc_embeds_the_generated_summary():
    assert reference.summary() in (ROOT / "docs" / "interworx.md").read_text(), "its table is reference.summary()"


def test_docs_api_md_is_the_generated_reference():
    assert (ROOT / "docs" / "api.md").read_text() == reference.markdown(), \
        "regenerate with: .venv/bin/python -m tools.apiref"


def test_docs_page_is_served_without_a_key_and_names_every_action_and_input(env):
    reply = env.client.get("/docs")
    assert reply.status_code == 200 and reply.content_type == "text/html; charset=utf-8"
    page = reply.get_data(as_text=True)
    assert "<script" not in page and "http://" not in page.replace("http://localhost", "")
    for action in ACTIONS.values():
        assert f'<h2 id="{action.name}">' in page
        for spec in action.inputs:
            assert f"<td>{spec.name}</td>" in page
    assert "/docs" in env.client.get("/").get_json()["payload"]      # the 404 of / points there


def test_openapi_is_valid_and_describes_every_input_and_payload():
    doc = openapi.document()
    validate(doc)
    schemas = doc["components"]["schemas"]
    for action in ACTIONS.values():
        props = schemas[f"Inputs_{action.name}"]["properties"]
        assert list(props) == [i.name for i in action.inputs]
        assert all(p["description"] for p in props.values()), action.name
        for spec in action.inputs:
            if spec.kind == "int":     # the string form is bounded by the range's digits
                assert props[spec.name]["oneOf"][1]["pattern"] == f"^[0-9]{{1,{len(str(spec.maximum))}}}$"
        ok = doc["paths"][f"{CONTROLLERS['/nodeworx/mail/imap'].path}/{action.name}"]["post"]["responses"]["200"]
        assert ok == {"$ref": f"#/components/responses/Ok_{action.returns}"}
    assert {"/healthz", "/metrics", "/xmlrpc", "/soap", "/openapi.json", "/docs"} <= set(doc["paths"])
    assert [s["url"] for s in doc["servers"]][:2] == ["http://localhost", "http://127.0.0.1:8143"]


@pytest.mark.parametrize("name", sorted(reference.PAYLOAD_WORDS))
def test_every_payload_kind_is_in_both_references(name):
    assert name in openapi.PAYLOADS
