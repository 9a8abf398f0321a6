"""LVR's GRPO plumbing on a tiny random Qwen2.5-VL with LVR's tokens (fp32, CPU): latent mode from
`EngineConfig`, latents kept on rollout samples through abort, the buffer and resume, and the
trainer's forward replaying them so its log-probs are the engine's (spans masked out of the loss)."""

import pytest
import torch

from reasonrl.engine import LLMEngine, SamplingParams
from reasonrl.engine.config import EngineConfig
from reasonrl.engine.latent import SCALE_KEY, LatentConfig
from reasonrl.envs.base import Prompt
from reasonrl.models import Tokenizer, load_model
from reasonrl.models.qwen2_5_vl import MultimodalPrompt
from reasonrl.models.tiny_vlm import LVR_TOKENS, make_vlm_checkpoint, make_vlm_tokenizer
from reasonrl.rl.batch import collate, policy_mask, response_logprobs
from reasonrl.rl.config import from_dict
from reasonrl.rl.update import PolicyUpdate
from reasonrl.rollout.april import AprilRollout, RolloutStats
from reasonrl.rollout.backend import EngineBackend
from reasonrl.rollout.buffer import PartialBuffer
from reasonrl.rollout.config import RolloutConfig
from reasonrl.rollout.sample import Sample, Status
from tests.models.vlm_common import CORPUS, images_prompt

STEPS = 3
KV = {"kv_cache_memory": 1 << 22, "block_size": 4}


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    tok = make_vlm_tokenizer(CORPUS, vocab_size=384, extra_special_tokens=LVR_TOKENS)
    return make_vlm_checkpoint(tmp_path_factory.mktemp("lvr_grpo") / "ckpt", tok, seed=3, std=0.1)


@pytest.fixture(scope="module")
def model(path):
    return load_model(path)


@pytest.fixture(scope="module")
def tok(path):
    return Tokenizer.from_dir(path)


def entering(model, tok, seed=1) -> MultimodalPrompt:
    """An image prompt ending with `<|lvr_start|>`: the output begins in latent mode."""
    mm = images_prompt(tok, model.vlm_config, [(56, 84)], seed=seed)
    start = tok.tok.token_to_id("<|lvr_start|>")
    return MultimodalPrompt.from_ids(mm.input_ids + [start], mm.pixel_values, mm.image_grid_thw, model.vlm_config)


def test_engine_config_turns_latent_mode_on_from_the_tokenizer(model, tok, path):
    engine = LLMEngine(model, tok, EngineConfig(latent_steps=STEPS, **KV))
    assert engine.latents.config == LatentConfig.from_tokenizer(tok, steps=STEPS)
    engine.add_request("a", entering(model, tok), SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))
    out = engine.drain()["a"].outputs[0]
    lvr, end = tok.tok.token_to_id("<|lvr|>"), tok.tok.token_to_id("<|lvr_end|>")
    assert out.token_ids[:STEPS + 1] == [lvr] * STEPS + [end] and out.latents.positions == [0, 1, 2]
    assert LLMEngine(model, tok, EngineConfig(**KV)).latents is None  # off by default
    with pytest.raises(ValueError, match="latent_steps must be a positive"):
        EngineConfig(latent_steps=0)
    with pytest.raises(ValueError, match="latent_exit"):
        EngineConfig(latent_steps=2, latent_exit="never")
    with pytest.raises(ValueError, match="needs the checkpoint's tokenizer"):
        LLMEngine(model, None, EngineConfig(latent_steps=2, **KV))
    plain = make_vlm_tokenizer(CORPUS, vocab_size=384)
    with pytest.raises(ValueError, match="no token <\\|lvr_start\\|>"):
        LLMEngine(model, plain, EngineConfig(latent_steps=2, **KV))


def test_the_checkpoint_latent_scale_multiplies_the_fed_back_state(model, tok):
    prompt, params = entering(model, tok), SamplingParams(temperature=0, max_tokens=2, ignore_eos=True)
    firsts = []
    for scale in (None, 2.5):
        if scale is not None:
            model.vlm_config.raw[SCALE_KEY] = scale
        engine = LLMEngine(model, tok, EngineConfig(latent_steps=STEPS, **KV))
        engine.add_request("a", prompt, params)
        firsts.append(engine.drain()["a"].outputs[0].latents.vectors[0])
    del model.vlm_config.raw[SCALE_KEY]
    torch.testing.assert_close(firsts[1], 2.5 * firsts[0])  # the first latent's context is the same


def sampled(model, tok, n=3, steps=STEPS):
    """Samples rolled out in latent mode (temperature 1): prompt, tokens, engine log-probs, latents."""
    engine = LLMEngine(model, tok, EngineConfig(latent_steps=steps, **KV))
    prompts = [entering(model, tok, seed=i) for i in range(n)]
    for i, p in enumerate(prompts):
        engine.add_request(str(i), p, SamplingParams(temperature=1.0, seed=10 + i, max_tokens=12, ignore_eos=True))
    outs = engine.drain()
    return [Sample(prompt_ids=p.input_ids, response_ids=outs[str(i)].outputs[0].token_ids,
                   logprobs=outs[str(i)].outputs[0].logprobs, versions=[0] * 12, status=Status.COMPLETED,
                   multimodal=p, latents=outs[str(i)].outputs[0].latents) for i, p in enumerate(prompts)]


def test_the_trainer_forward_replays_latents_and_masks_the_spans(model, tok):
    samples = sampled(model, tok)
    batch = collate(samples, [1.0, -1.0, 0.5], tok.pad_token_id, model.device)
    assert batch.mask[:, :STEPS + 1].sum() == 0 and batch.mask[:, STEPS + 1:].all()  # latents and their end left out
    with torch.no_grad():
        logp = response_logprobs(model, batch)
        blind = response_logprobs(model, collate([Sample(**{**s.__dict__, "latents": None}) for s in samples], [0.0] * 3,
                                                 tok.pad_token_id, model.device))
    engine = torch.tensor([s.logprobs for s in samples])
    torch.testing.assert_close(logp[batch.mask], engine[batch.mask], atol=1e-4, rtol=1e-4)
    assert (blind[batch.mask] - engine[batch.mask]).abs().max() > 1e-2  # the replay is what makes them agree
    assert policy_mask(7, None) == [True] * 7
    assert policy_mask(8, type(samples[0].latents)([2, 3], torch.zeros(2, 1))) == [True, True, False, False, False,
                                                                                    True, True, True]


def test_grpo_updates_with_replayed_latents_for_the_current_and_old_policy(model, tok, path):
    """Two PPO epochs: the old log-probs are recomputed before the update (the old policy's replay)
    and the first pass's current ones equal the engine's: the mismatch metric is ~0, and the
    update changes the weights."""
    samples = sampled(model, tok)
    cfg = from_dict({"model": {"path": str(path), "freeze_vision": True}, "optim": {"lr": 1e-3, "ppo_epochs": 2},
                     "train": {"steps": 1}})
    policy = load_model(path)
    update = PolicyUpdate(policy, cfg, tok.pad_token_id)
    old = update._old_logprobs(samples)
    for s, o in zip(samples, old):
        used = torch.tensor(policy_mask(len(s.response_ids), s.latents))
        torch.testing.assert_close(o[used], torch.tensor(s.logprobs)[used], atol=1e-4, rtol=1e-4)
    before = policy.embed_tokens.weight.detach().clone()
    stats = update(samples, [1.0, -1.0, 0.0], version=0)
    assert stats["logprob_mismatch"] < 1e-4
    assert not torch.equal(before, policy.embed_tokens.weight)


def test_april_keeps_latents_through_abort_buffer_and_resume(model, tok):
    """A group aborted after its latent span is buffered (latents saved and restored with the
    buffer), resumed with its latents, and ends token-identical to an uninterrupted rollout."""
    engine = LLMEngine(model, tok, EngineConfig(latent_steps=STEPS, **KV))
    prompt = Prompt("p0", [{"role": "user", "content": "What is in the picture?"}])
    spec = RolloutConfig(prompts_per_step=1, samples_per_prompt=2, max_tokens=10, temperature=1.0)
    april = AprilRollout(EngineBackend(engine), spec, iter([prompt] * 4), lambda p: entering(model, tok),
                         lambda group: [setattr(s, "reward", 0.0) for s in group.samples], seed=5)
    live, stats = {}, RolloutStats()
    april._launch(live, 1, step=1, version=0, stats=stats)
    for _ in range(STEPS + 3):  # the span (3 latents, its end) and a token or two past it
        engine.step()
    for key, out in april.backend.abort_all():
        april._update(live, [], key, out, 0, stats, aborting=True)  # as collect() ends a step
    group = live[0]
    assert all(s.status is Status.ABORTED and s.latents.positions == [0, 1, 2] for s in group.samples)
    buffer = PartialBuffer()
    buffer.put(group)
    april.buffer.load_state_dict(buffer.state_dict())  # as a checkpoint would restore it
    restored = april.buffer.groups[0].samples[0]
    torch.testing.assert_close(restored.latents.vectors, group.samples[0].latents.vectors)
    groups, _ = april.collect(step=2, version=1)
    (done,) = groups
    for s in done.samples:
        alone = LLMEngine(model, tok, EngineConfig(latent_steps=STEPS, **KV))
        alone.add_request("a", entering(model, tok), SamplingParams(temperature=1.0, seed=s.seed, max_tokens=10))
        ref = alone.drain()["a"].outputs[0]
        assert s.status.finished and s.response_ids == ref.token_ids
        assert s.versions[:STEPS + 2] == [0] * (STEPS + 2) and s.versions[-1] == 1  # resumed under the new version
        torch.testing.assert_close(s.latents.vectors, ref.latents.vectors, atol=1e-4, rtol=1e-4)


def test_rollout_scoring_shows_the_lvr_environment_its_latent_span(model, tok):
    from reasonrl.envs.registry import load_environment
    from reasonrl.models.chat import ChatEncoder
    from reasonrl.rollout.buffer import Group
    from reasonrl.rollout.manager import RolloutManager

    env = load_environment("lvr:?image_size=112")
    manager = RolloutManager(EngineBackend(LLMEngine(model, tok, EngineConfig(**KV))), env, ChatEncoder(tok, model),
                             RolloutConfig())
    prompt = env.prompts(1)[0]
    texts = ["<|lvr_start|><|lvr|><|lvr|><|lvr_end|>\\boxed{" + prompt.answer + "}", "\\boxed{" + prompt.answer + "}"]
    group = Group(0, prompt, [1], [Sample(prompt_ids=[1], response_ids=tok.encode(t) + [tok.eos_token_ids[0]])
                                   for t in texts], born_step=0)
    manager.score(group)
    assert [s.reward for s in group.samples] == [2.0, 1.0]
