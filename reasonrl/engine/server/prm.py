"""POST /v1/prm/score: a process reward model's step scores over HTTP (`reasonrl serve --prm DIR`).

    {"messages": [{"role": "user", "content": "Add: 4 + 7"}], "responses": ["4+7=11 \\\\boxed{11}"]}
    -> {"object": "prm.scores", "data": [{"index": 0, "steps": [...], "scores": [0.98, 0.97], "seen": 2}]}

`prompt` (a plain string) may stand for `messages`; `response` (one string) for `responses`. The
steps are cut by the PRM's own step format. A malformed body is a 400 naming the parameter; any
response text scores (none raises: see reward/prm/scoring.py). Scoring runs off the event loop.
"""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import FastAPI, Request, Response
from pydantic import BaseModel, Field, model_validator

from reasonrl.engine.protocol import STRICT
from reasonrl.engine.server.errors import APIError
from reasonrl.engine.server.intake import Offload, parse_json, read_body
from reasonrl.engine.server.prepare import validate_body

Text = Annotated[str, Field(max_length=1 << 20)]


class Message(BaseModel):
    model_config = STRICT
    role: str = Field(min_length=1, max_length=64)
    content: Text


class ScoreRequest(BaseModel):
    model_config = STRICT
    messages: list[Message] | None = Field(None, min_length=1, max_length=256)
    prompt: Text | None = None
    responses: list[Text] | None = Field(None, min_length=1, max_length=256)
    response: Text | None = None

    @model_validator(mode="after")
    def _one_of_each(self):
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("give either messages or prompt")
        if (self.responses is None) == (self.response is None):
            raise ValueError("give either responses or response")
        return self

    def items(self) -> list[tuple[list[dict], str]]:
        messages = [m.model_dump() for m in self.messages] if self.messages else [{"role": "user", "content": self.prompt}]
        return [(messages, r) for r in (self.responses if self.responses is not None else [self.response])]


def install_prm(app: FastAPI, path: str, device, max_body_bytes: int, offload: Offload) -> None:
    """Load the PRM at `path` onto `device` and add its route."""
    from reasonrl.reward.prm.model import load_prm
    from reasonrl.reward.prm.scoring import PRMScorer

    scorer = PRMScorer(*load_prm(path, device=device))

    def score(body: ScoreRequest) -> bytes:
        """The answer as JSON bytes, rendered here, off the event loop (it may be megabytes)."""
        try:
            out = scorer.score(body.items())
        except ValueError as exc:  # a chat template that refuses these messages
            raise APIError(f"messages: {exc}", param="messages") from None
        return json.dumps({"object": "prm.scores", "data": [
            {"index": i, "steps": s.steps, "scores": s.scores, "seen": s.seen} for i, s in enumerate(out)]}).encode()

    @app.post("/v1/prm/score")
    async def prm_score(request: Request):
        raw = await read_body(request, max_body_bytes)
        body = await offload.run(lambda: validate_body(parse_json(raw), ScoreRequest))
        return Response(await offload.run(lambda: score(body)), media_type="application/json")
