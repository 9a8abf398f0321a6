"""`reasonrl serve --prm DIR`: POST /v1/prm/score gives the PRM's step scores; malformed bodies get a 400."""

import httpx
import pytest
from serve_helpers import Server, demo_engine

from reasonrl.engine.server import ServeConfig
from reasonrl.reward.prm.model import PRMConfig, save_prm
from reasonrl.reward.prm.run import new_prm
from reasonrl.reward.prm.steps import StepFormat

MESSAGES = [{"role": "user", "content": "Add: 4 + 7 + 2"}]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    scorer = new_prm("reasonrl/demo/policy", PRMConfig(steps=StepFormat(delimiter=" ")), "cpu", seed=3)
    path = save_prm(scorer.prm, tmp_path_factory.mktemp("prm") / "prm", scorer.tokenizer)
    server = Server(demo_engine(), ServeConfig(served_model_name="demo", prm=str(path)))
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client, scorer
    server.stop()


def test_scores_match_the_library(served):
    client, scorer = served
    responses = ["4+7=11 11+2=13 \\boxed{13}", "\\boxed{10}", "", "garbage\x00 <|step|> \ufffd"]
    r = client.post("/v1/prm/score", json={"messages": MESSAGES, "responses": responses})
    assert r.status_code == 200
    data = r.json()["data"]
    expected = scorer.score([(MESSAGES, t) for t in responses])
    assert [d["steps"] for d in data] == [e.steps for e in expected]
    for d, e in zip(data, expected):
        assert d["scores"] == pytest.approx(e.scores, abs=1e-6)
    one = client.post("/v1/prm/score", json={"prompt": "Add: 4 + 7 + 2", "response": responses[0]}).json()
    assert one["data"][0]["scores"] == pytest.approx(data[0]["scores"], abs=1e-6)


@pytest.mark.parametrize("body", [
    {"messages": MESSAGES}, {"responses": ["x"]}, {"prompt": "a", "messages": MESSAGES, "response": "x"},
    {"prompt": "a", "response": 3}, {"prompt": "a", "responses": []}, {"messages": [{"role": "user"}], "response": "x"},
    {"prompt": "a", "response": "x", "extra": 1}, [1, 2],
])
def test_malformed_requests_get_400(served, body):
    client, _ = served
    r = client.post("/v1/prm/score", json=body)
    assert r.status_code == 400 and r.json()["error"]["message"]


def test_non_json_gets_400(served):
    client, _ = served
    assert client.post("/v1/prm/score", content=b"{not json").status_code == 400
