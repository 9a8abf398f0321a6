"""API keys, administrative routes, confined weight loading, seeds from OS entropy, the banner."""

from __future__ import annotations

import httpx
import pytest
from serve_helpers import Server, demo_engine

from reasonrl.engine.server import ServeConfig, banner
from reasonrl.engine.server.prepare import Preparer
from reasonrl.models.loader import save_model

BODY = {"prompt": "1+1=", "max_tokens": 3, "temperature": 0}


def bearer(key):
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    server = Server(demo_engine(), ServeConfig(served_model_name="demo", api_key="user-key", admin_api_key="admin-key",
                                               load_weights_dir=str(root)))
    save_model(server.engine.model, root / "ok", server.engine.tokenizer)
    server.root = root
    yield server
    server.stop()


@pytest.mark.parametrize("method,path", [("GET", "/v1/models"), ("POST", "/v1/completions"), ("GET", "/metrics"),
                                         ("GET", "/v1/stats"), ("POST", "/v1/abort"), ("GET", "/no/such/route")])
def test_every_route_but_health_needs_the_key(keyed, method, path):
    for headers in ({}, bearer("wrong"), {"Authorization": "Basic user-key"}, bearer("user-key" + "x"), {"Authorization": "Bearer"}):
        r = httpx.request(method, keyed.url + path, json=BODY, headers=headers)
        assert r.status_code == 401, (headers, r.text)
        assert r.json()["error"]["type"] == "authentication_error" and r.headers["www-authenticate"] == "Bearer"
    assert httpx.get(keyed.url + "/health").status_code == 200


def test_the_key_opens_the_routes(keyed):
    assert httpx.post(keyed.url + "/v1/completions", json=BODY, headers=bearer("user-key")).status_code == 200
    assert httpx.get(keyed.url + "/v1/models", headers={"authorization": "bearer user-key"}).status_code == 200
    r = httpx.post(keyed.url + "/v1/abort", json={"request_id": "nope"}, headers=bearer("user-key"))
    assert r.json() == {"aborted": []}


def test_admin_routes_need_the_admin_key(keyed):
    for path, body in (("/v1/abort", {"all": True}), ("/v1/load_weights", {"path": "ok"})):
        r = httpx.post(keyed.url + path, json=body, headers=bearer("user-key"))
        assert r.status_code == 401 and "admin" in r.json()["error"]["message"]
    assert httpx.post(keyed.url + "/v1/abort", json={"all": True}, headers=bearer("admin-key")).status_code == 200
    # the admin key opens the ordinary routes too (a trainer holds one key)
    assert httpx.post(keyed.url + "/v1/completions", json=BODY, headers=bearer("admin-key")).status_code == 200


def test_load_weights_stays_inside_its_directory(keyed, tmp_path):
    admin = httpx.Client(base_url=keyed.url, headers=bearer("admin-key"), timeout=60)
    outside = tmp_path / "outside"
    save_model(keyed.engine.model, outside, keyed.engine.tokenizer)
    (keyed.root / "link").symlink_to(outside)
    for path in (str(outside), "../" + outside.name, "link", str(keyed.root / ".." / outside.name)):
        r = admin.post("/v1/load_weights", json={"path": path})
        assert r.status_code == 403 and r.json()["error"]["param"] == "path", (path, r.text)
    assert admin.post("/v1/load_weights", json={"path": "ok"}).json() == {"status": "ok"}
    assert admin.post("/v1/load_weights", json={"path": str(keyed.root / "ok")}).json() == {"status": "ok"}


@pytest.fixture
def shared_key_server(tmp_path):
    server = Server(demo_engine(), ServeConfig(api_key="k1", admin_routes=False))
    yield server
    server.stop()


def test_admin_routes_can_be_turned_off(shared_key_server):
    for path, body in (("/v1/abort", {"all": True}), ("/v1/load_weights", {"path": "x"})):
        r = httpx.post(shared_key_server.url + path, json=body, headers=bearer("k1"))
        assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"


def test_api_key_from_the_environment(monkeypatch):
    monkeypatch.setenv("REASONRL_API_KEY", "from-env")
    monkeypatch.setenv("REASONRL_ADMIN_KEY", "admin-env")
    cfg = ServeConfig()
    assert cfg.api_key == "from-env" and cfg.admin_api_key == "admin-env"
    assert ServeConfig(api_key="flag").api_key == "flag"
    with pytest.raises(ValueError, match="api_key"):
        ServeConfig(api_key=" spaced ")


def test_unseeded_requests_draw_from_os_entropy_unless_seeded():
    engine = demo_engine()
    raw = b'{"prompt": [[1, 2], [3, 4]], "max_tokens": 2}'

    def seeds(cfg):
        return [p.seed for p in Preparer(engine.tokenizer, 256, cfg).completion(raw).params]

    a, b = seeds(ServeConfig()), seeds(ServeConfig())
    assert a != b and len(set(a)) == 2  # two servers differ; two prompts of one request differ
    assert seeds(ServeConfig(seed=7)) == seeds(ServeConfig(seed=7))
    seeded = Preparer(engine.tokenizer, 256, ServeConfig()).completion(b'{"prompt": [[1], [2]], "seed": 5}').params
    assert [p.seed for p in seeded] == [5, 5]


def test_banner_says_what_is_served_and_warns_when_exposed():
    engine = demo_engine()
    text = banner(engine, ServeConfig(served_model_name="demo", host="0.0.0.0"))
    assert "demo" in text and "cpu" in text and "float32" in text and "dense" in text
    assert f"{engine.stats()['kv_capacity_tokens']} tokens" in text and "0.0.0.0:8000" in text
    assert "WARNING" in text and "OS entropy" in text
    assert "WARNING" not in banner(engine, ServeConfig(host="0.0.0.0", api_key="k"))
    assert "WARNING" not in banner(engine, ServeConfig())


def test_the_banner_names_the_port_bound_with_port_0(monkeypatch, capsys):
    """--port 0 printed `listening on http://127.0.0.1:0`: the banner went out before the socket was bound."""
    import uvicorn

    from reasonrl.engine.server.main import serve

    bound = []

    async def main_loop(self):  # listening: note the port, then shut down at once
        bound.append(self.servers[0].sockets[0].getsockname()[1])

    monkeypatch.setattr(uvicorn.Server, "main_loop", main_loop)
    serve(demo_engine(), ServeConfig(port=0, log_level="critical"))
    assert bound[0] != 0 and f"listening on http://127.0.0.1:{bound[0]}\n" in capsys.readouterr().err
