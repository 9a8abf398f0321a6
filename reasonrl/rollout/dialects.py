"""What each kind of inference server calls generate, abort and weight update (`rollout.remote_engine`).

`RemoteBackend` (remote.py) speaks to a server through one of these; APRIL sees no difference.

| engine | generate | resume a partial sample | abort all | new weights |
|---|---|---|---|---|
| reasonrl serve | POST /v1/completions, `return_token_ids`, `logprobs: 0` | `resume: {token_ids, logprobs}`: the engine continues the sample's own random stream | POST /v1/abort `{all: true}` | POST /v1/load_weights `{path}` |
| SGLang (native API; read at sgl-project/sglang 0025436e, 2026) | POST /generate `{input_ids, sampling_params, return_logprob, rid}` | prompt + partial tokens as `input_ids`, `max_new_tokens` lowered; their log-probs kept client-side | POST /abort_request `{abort_all: true}` | POST /update_weights_from_disk `{model_path, weight_version}`, then POST /flush_cache |
| vLLM (OpenAI server; `return_token_ids` needs vLLM >= 0.10.2; abort needs `VLLM_SERVER_DEV_MODE=1`) | POST /v1/completions, `return_token_ids`, `logprobs: 1` | as SGLang | POST /abort_requests `{}` (dev-mode RL routes) | not driven here: vLLM takes new weights through its NCCL weight-transfer routes (/init_weight_transfer_engine, /update_weights) |

Only the reasonrl dialect is tested end to end (against `reasonrl serve`), and the OpenAI
completions path of the vLLM dialect too (reasonrl serve speaks it); the SGLang routes follow its
source and are not exercised here. Log-probs must be of the distribution sampled from: start vLLM
with `--logprobs-mode processed_logprobs` (its default is the raw model's); the trainer's
`logprob_mismatch` metric shows any gap.
"""

from __future__ import annotations

from dataclasses import dataclass

from reasonrl.engine.sampling_params import SamplingParams
from reasonrl.engine.sequence import CompletionOutput

Route = tuple[str, dict]  # (path, JSON body)


@dataclass
class Dialect:
    name: str = "reasonrl"
    health: str = "/health"

    def generate(self, key: str, prompt_ids: list[int], params: SamplingParams, output_ids: list[int],
                 output_logprobs: list[float]) -> Route:
        body = {"prompt": prompt_ids, "max_tokens": params.max_tokens, "temperature": params.temperature,
                "top_p": params.top_p, "seed": params.seed, "logprobs": 0, "return_token_ids": True, "request_id": key,
                "stop_token_ids": params.stop_token_ids}
        if output_ids:
            body["resume"] = {"token_ids": output_ids, "logprobs": output_logprobs}
        return "/v1/completions", body

    def parse(self, reply: dict, output_ids: list[int], output_logprobs: list[float], seed: int) -> CompletionOutput:
        """The whole sample so far (resumed tokens included) from the server's reply."""
        c = reply["choices"][0]
        return CompletionOutput(0, c["token_ids"], c["logprobs"]["token_logprobs"], c["text"], c["finish_reason"],
                                c.get("stop_reason"), None, c.get("seed") or seed)

    def abort_all(self) -> Route:
        return "/v1/abort", {"all": True}

    def load_weights(self, path: str, version: int) -> list[Route]:
        return [("/v1/load_weights", {"path": path})]

    @property
    def stats(self) -> str | None:
        return "/v1/stats"


class VLLMDialect(Dialect):
    """vLLM's OpenAI completions; a partial sample resumes as a longer prompt (text_token ids)."""

    def __init__(self):
        super().__init__("vllm")

    def generate(self, key, prompt_ids, params, output_ids, output_logprobs) -> Route:
        body = {"prompt": list(prompt_ids) + list(output_ids), "max_tokens": params.max_tokens - len(output_ids),
                "temperature": params.temperature, "top_p": params.top_p, "seed": params.seed, "logprobs": 1,
                "return_token_ids": True, "stop_token_ids": params.stop_token_ids, "request_id": key}
        return "/v1/completions", body

    def parse(self, reply, output_ids, output_logprobs, seed) -> CompletionOutput:
        c = reply["choices"][0]
        new_ids, new_logprobs = c["token_ids"], c["logprobs"]["token_logprobs"]
        return CompletionOutput(0, list(output_ids) + list(new_ids), list(output_logprobs) + list(new_logprobs),
                                c["text"], c["finish_reason"], c.get("stop_reason"), None, seed)

    def abort_all(self) -> Route:
        return "/abort_requests", {}

    def load_weights(self, path, version) -> list[Route]:
        raise ValueError("rollout.remote_engine vllm: pushing weights to a vLLM server is not supported (vLLM takes "
                         "them through its NCCL weight-transfer routes); train with reasonrl serve or SGLang, or use "
                         "vLLM for evaluation and fixed-weight rollouts")

    @property
    def stats(self) -> str | None:
        return None


class SGLangDialect(Dialect):
    """SGLang's native /generate; a partial sample resumes as a longer prompt."""

    def __init__(self):
        super().__init__("sglang")

    def generate(self, key, prompt_ids, params, output_ids, output_logprobs) -> Route:
        sampling = {"max_new_tokens": params.max_tokens - len(output_ids), "temperature": params.temperature,
                    "top_p": params.top_p, "stop_token_ids": params.stop_token_ids}
        if params.seed is not None:
            sampling["sampling_seed"] = params.seed
        return "/generate", {"input_ids": list(prompt_ids) + list(output_ids), "sampling_params": sampling,
                             "return_logprob": True, "rid": key}

    def parse(self, reply, output_ids, output_logprobs, seed) -> CompletionOutput:
        meta = reply["meta_info"]
        pairs = meta["output_token_logprobs"]  # [logprob, token id, text or None] per generated token
        reason = (meta.get("finish_reason") or {}).get("type", "abort")
        return CompletionOutput(0, list(output_ids) + [int(p[1]) for p in pairs],
                                list(output_logprobs) + [float(p[0]) for p in pairs], reply.get("text", ""),
                                reason, None, None, seed)

    def abort_all(self) -> Route:
        return "/abort_request", {"abort_all": True}

    def load_weights(self, path, version) -> list[Route]:
        return [("/update_weights_from_disk", {"model_path": path, "weight_version": str(version)}),
                ("/flush_cache", {})]

    @property
    def stats(self) -> str | None:
        return None


DIALECTS = {"reasonrl": Dialect, "vllm": VLLMDialect, "sglang": SGLangDialect}
