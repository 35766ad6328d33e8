"""Bearer-token auth: 401 for missing/invalid/revoked tokens, 403 for a scope too small."""

from __future__ import annotations


import pytest
from fastapi.testclient import TestClient

from tandem.cloud_hub.auth import SCOPES, TOKEN_RE, scope_allows
from tandem.cloud_hub.hub import Hub

# (method, path, json body, scope it needs)
ROUTES = [
    ("GET", "/v1/hub", None, "read"),
    ("GET", "/v1/keys/release", None, "read"),
    ("GET", "/v1/devices", None, "read"),
    ("GET", "/v1/models", None, "read"),
    ("GET", "/v1/variants", None, "read"),
    ("GET", "/v1/artifacts/" + "0" * 64, None, "read"),
    ("GET", "/v1/drift/alerts", None, "read"),
    ("POST", "/v1/devices", {"device_id": "d-1", "profile": "cpu-x86", "agent_version": "0.1.0"}, "operate"),
    ("POST", "/v1/models", None, "operate"),
    ("GET", "/v1/tokens", None, "admin"),
    ("POST", "/v1/tokens", {"name": "x", "scope": "read"}, "admin"),
]


@pytest.fixture
def hub(hub_config):
    h = Hub(hub_config)
    yield h
    h.stop()


@pytest.fixture
def api(hub):
    return TestClient(hub.app)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_health_and_docs_need_no_token(api):
    r = api.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    r = api.get("/", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/console/"
    assert api.get("/docs").status_code == 200
    assert "/v1/devices" in api.get("/openapi.json").json()["paths"]


@pytest.mark.parametrize("method,path,body,scope", ROUTES)
def test_every_route_but_health_refuses_a_missing_token(api, method, path, body, scope):
    r = api.request(method, path, json=body)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert "tokens create" in r.json()["detail"]


@pytest.mark.parametrize("bad", ["nonsense", "tdm_000000000000_" + "a" * 43, "Basic abc"])
def test_invalid_tokens_get_401(api, hub, bad):
    real = hub.tokens.create("real", "admin").token
    assert api.get("/v1/devices", headers=bearer(bad)).status_code == 401
    # Right id, wrong secret.
    forged = real[: real.rindex("_") + 1] + "x" * 43
    assert api.get("/v1/devices", headers=bearer(forged)).status_code == 401
    assert api.get("/v1/devices", headers={"Authorization": "Basic " + real}).status_code == 401


@pytest.mark.parametrize("method,path,body,scope", ROUTES)
def test_scopes_are_ordered_and_too_small_a_scope_gets_403(api, hub, method, path, body, scope):
    for granted in SCOPES:
        token = hub.tokens.create(f"t-{granted}", granted).token
        r = api.request(method, path, json=body, headers=bearer(token))
        if scope_allows(granted, scope):
            assert r.status_code not in (401, 403), (granted, r.text)
        else:
            assert r.status_code == 403, (granted, r.status_code)
            assert scope in r.json()["detail"] and granted in r.json()["detail"]


def test_a_revoked_token_gets_401_from_then_on(api, hub):
    admin = hub.tokens.create("admin", "admin").token
    created = api.post("/v1/tokens", json={"name": "ci", "scope": "operate"}, headers=bearer(admin)).json()
    ci = created["token"]
    assert api.get("/v1/devices", headers=bearer(ci)).status_code == 200
    r = api.delete(f"/v1/tokens/{created['token_id']}", headers=bearer(admin))
    assert r.status_code == 200 and r.json()["revoked"] is True
    r = api.get("/v1/devices", headers=bearer(ci))
    assert r.status_code == 401 and "revoked" in r.json()["detail"]
    listed = {t["token_id"]: t for t in api.get("/v1/tokens", headers=bearer(admin)).json()}
    assert listed[created["token_id"]]["revoked"] and "token" not in listed[created["token_id"]]
    assert api.delete("/v1/tokens/doesnotexist", headers=bearer(admin)).status_code == 404


def test_tokens_are_stored_hashed(hub):
    new = hub.tokens.create("ci", "operate")
    secret = TOKEN_RE.match(new.token).group(2)  # the secret may itself hold '_' (token_urlsafe)
    raw = hub.db.query("SELECT * FROM tokens")  # what the database holds, on either backend
    assert raw and all(secret not in str(row) and new.token not in str(row) for row in raw)


def test_bad_scope_or_name_is_a_clear_422(api, hub):
    admin = hub.tokens.create("admin", "admin").token
    r = api.post("/v1/tokens", json={"name": "x", "scope": "root"}, headers=bearer(admin))
    assert r.status_code == 422 and "read, operate, admin" in r.json()["detail"]
