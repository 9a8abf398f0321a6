"""What the engine admits: the checks a request's token ids, sampling parameters and resumed
tokens pass, against what the engine can represent, before it gets a sequence (the server answers
these errors with a 400). Images are checked by engine/images.py."""

from __future__ import annotations

import operator

from reasonrl.config import is_number
from reasonrl.engine.sampling_params import ParamError, SamplingParams


def as_token_ids(request_id: str, name: str, ids) -> list[int] | None:
    """`ids` as a list of Python ints: a list or tuple of integers (numpy's and 0-d integer tensors
    included), or a 1-D numpy array or tensor; ValueError naming the first that is not an integer."""
    if ids is None:
        return None
    if getattr(ids, "ndim", None) == 1:  # a numpy array or a tensor
        ids = ids.tolist()
    if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
        raise ValueError(f"request {request_id!r}: {name} must be a list of token ids, got {type(ids).__name__}")
    out = []
    for t in ids:
        try:
            if isinstance(t, bool) or type(t).__name__ == "bool_":
                raise TypeError
            out.append(operator.index(t))
        except TypeError:
            raise ValueError(f"request {request_id!r}: {name} token id {t!r} is not an integer") from None
    return out


def check_request(request_id: str, prompt_ids: list[int], params: SamplingParams, output_ids: list[int] | None,
                  output_logprobs: list[float] | None, vocab: int, max_model_len: int) -> None:
    """ValueError naming the request and the offending input (a ParamError naming the field, for the
    server's 400: prompt, output_ids, stop_token_ids, logit_bias)."""
    if not prompt_ids:
        raise ParamError("prompt", f"request {request_id!r}: the prompt is empty")
    if not isinstance(params, SamplingParams):
        raise ValueError(f"request {request_id!r}: params must be SamplingParams, got {type(params).__name__}")
    for name, ids in (("prompt", prompt_ids), ("output_ids", output_ids or []), ("stop_token_ids", params.stop_token_ids),
                      ("logit_bias", list(params.logit_bias))):
        bad = next((t for t in ids if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab), None)
        if bad is not None:
            raise ParamError(name, f"request {request_id!r}: {name} token id {bad!r} is outside the vocabulary [0, {vocab})")
    if len(prompt_ids) >= max_model_len:
        raise ValueError(f"request {request_id!r}: prompt of {len(prompt_ids)} tokens leaves no room in "
                         f"max_model_len={max_model_len}")
    if output_ids is not None:
        if params.n != 1:
            raise ValueError(f"request {request_id!r}: resume one sample at a time (n=1), got n={params.n}")
        if output_logprobs is None or len(output_logprobs) != len(output_ids):
            raise ValueError(f"request {request_id!r}: output_logprobs must give one log-prob per resumed token")
        if not all(is_number(x) for x in output_logprobs):
            raise ValueError(f"request {request_id!r}: output_logprobs must be finite numbers")
