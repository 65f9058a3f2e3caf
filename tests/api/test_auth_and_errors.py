from __future__ import annotations

import uuid

import pytest
from rest_framework.test import APIClient

from tests.api import (
    MESSAGES,
    SESSIONS,
    assert_error,
    create_session,
    messages_url,
    reactions_url,
    session_url,
)

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", SESSIONS),
        ("post", SESSIONS),
        ("get", session_url(str(uuid.uuid4()))),
        ("patch", session_url(str(uuid.uuid4()))),
        ("delete", session_url(str(uuid.uuid4()))),
        ("get", messages_url(str(uuid.uuid4()))),
        ("post", MESSAGES),
        ("post", reactions_url(str(uuid.uuid4()))),
        ("delete", f"{reactions_url(str(uuid.uuid4()))}x/"),
        ("get", "/api/v1/agents/"),
        ("get", "/api/v1/tools/"),
    ],
)
def test_every_endpoint_is_401_without_credentials(method, path):
    response = getattr(APIClient(), method)(path, {}, format="json")
    assert_error(response, 401, "not_authenticated")


def test_a_session_cookie_login_works_for_the_api(make_user):
    make_user("gus", password="Pass-word-77")
    client = APIClient()
    # Signed in through the login page (as a browser does; the lockout needs the request).
    assert client.post("/accounts/login/", {"username": "gus", "password": "Pass-word-77"}).status_code == 302
    assert client.get(SESSIONS).status_code == 200


def test_unknown_url_under_api_v1_is_a_json_404(api):
    response = api.get("/api/v1/no-such-thing/")
    assert_error(response, 404, "not_found")
    response = APIClient().get("/api/v1/sessions/a/b/c/d/")
    assert_error(response, 404, "not_found")


def test_method_not_allowed_is_a_json_405(api):
    assert_error(api.put(SESSIONS, {}, format="json"), 405, "method_not_allowed")
    assert_error(api.get(MESSAGES), 405, "method_not_allowed")


def test_agents_lists_the_active_agents_in_the_agent_shape(api):
    from chat.models import Agent

    Agent.objects.filter(slug="researcher").update(is_active=False)
    response = api.get("/api/v1/agents/")
    assert response.status_code == 200
    agents = response.json()
    slugs = [a["slug"] for a in agents]
    assert "assistant" in slugs
    assert "researcher" not in slugs
    for agent in agents:
        assert set(agent) == {"slug", "name", "description", "tools"}
        assert all(isinstance(t, str) for t in agent["tools"])


def test_tools_lists_every_tool_in_the_tool_shape(api):
    response = api.get("/api/v1/tools/")
    assert response.status_code == 200
    tools = response.json()
    assert tools
    for tool in tools:
        assert set(tool) == {"name", "description", "runs_on", "needs_approval", "parameters"}
        assert tool["runs_on"] in ("server", "client")
        assert isinstance(tool["needs_approval"], bool)
        assert isinstance(tool["parameters"], dict)


def test_agent_tools_are_all_listed_tools(api):
    tool_names = {t["name"] for t in api.get("/api/v1/tools/").json()}
    for agent in api.get("/api/v1/agents/").json():
        assert set(agent["tools"]) <= tool_names, agent


def test_openapi_schema_lists_every_endpoint_of_the_contract(api):
    response = api.get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    if response.status_code == 406:
        response = api.get("/api/v1/schema/?format=json")
    assert response.status_code == 200, response.content
    import json

    document = json.loads(response.content)
    assert document["openapi"].startswith("3.")
    paths = set(document["paths"])
    expected = {
        "/api/v1/auth/token/": {"post"},
        "/api/v1/agents/": {"get"},
        "/api/v1/tools/": {"get"},
        "/api/v1/sessions/": {"get", "post"},
        "/api/v1/sessions/{session_id}/": {"get", "patch", "delete"},
        "/api/v1/sessions/{session_id}/messages/": {"get"},
        "/api/v1/messages/": {"post"},
        "/api/v1/messages/{message_id}/reactions/": {"post"},
        "/api/v1/messages/{message_id}/reactions/{emoji}/": {"delete"},
    }
    assert set(expected) <= paths, sorted(paths)
    for path, methods in expected.items():
        assert methods <= set(document["paths"][path]), (path, document["paths"][path].keys())
    create = document["paths"]["/api/v1/messages/"]["post"]
    assert any(p["name"] == "Idempotency-Key" and p["in"] == "header" for p in create.get("parameters", []))


def test_openapi_schema_and_docs_need_credentials():
    assert_error(APIClient().get("/api/v1/schema/?format=json"), 401, "not_authenticated")
    response = APIClient().get("/api/v1/docs/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/?next=/api/v1/docs/")


def test_openapi_schema_matches_the_contract_shapes(api):
    document = api.get("/api/v1/schema/?format=json").json()
    schemas = document["components"]["schemas"]
    assert schemas["Session"]["properties"]["agent"].get("nullable") is True
    assert schemas["Message"]["properties"]["agent"].get("nullable") is True
    assert schemas["Message"]["properties"]["reply_to"].get("nullable") is True
    assert {"code", "detail"} <= set(schemas["Error"]["required"])
    assert {"fields", "retry_after"} <= set(schemas["Error"]["properties"])
    assert set(schemas["PaginatedSessionList"]["required"]) == {"next", "previous", "results"}
    token = document["paths"]["/api/v1/auth/token/"]["post"]
    assert {} in token.get("security", [{}]) and "401" not in token["responses"]
    assert set(token["responses"]) >= {"200", "400", "429"}
    send = document["paths"]["/api/v1/messages/"]["post"]["responses"]
    assert {"201", "400", "401", "404", "409", "422", "429"} <= set(send)
    assert "401" in document["paths"]["/api/v1/sessions/"]["get"]["responses"]


def test_swagger_docs_are_html_for_a_signed_in_user(client, user):
    client.force_login(user)
    response = client.get("/api/v1/docs/")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    assert b"swagger" in response.content.lower()


def test_healthz_reports_database_and_channel_layer_ok(client):
    response = client.get("/healthz")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["database"] == "ok"
    assert body["channel_layer"] == "ok"


def test_errors_never_leak_other_users_sessions_through_messages_endpoints(api, other_api):
    theirs = create_session(other_api, title="bob's secret")
    for response in (
        api.get(session_url(theirs["id"])),
        api.get(messages_url(theirs["id"])),
        api.patch(session_url(theirs["id"]), {"title": "x"}, format="json"),
        api.delete(session_url(theirs["id"])),
    ):
        assert_error(response, 404, "not_found")
        assert b"bob" not in response.content
