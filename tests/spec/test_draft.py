"""The draft head's checkpoint, its tie to the target, and online distillation."""

import json

import pytest
import torch

from reasonrl.engine.spec.distill import DistillConfig, distill_draft, distillation_loss
from reasonrl.engine.spec.draft import CONFIG_FILE, DraftHead, DraftInfo, attention_layout, fingerprint
from reasonrl.models.model import DecoderLM
from reasonrl.models.tiny import init_weights, tiny_config
from tests.rl.test_runs import Killed


def target(seed=0, vocab=32, hidden=64):
    return init_weights(DecoderLM(tiny_config(vocab_size=vocab, hidden_size=hidden)), std=0.3, seed=seed)


def info(model):
    c = model.config
    return DraftInfo(c.architecture, c.vocab_size, c.hidden_size, fingerprint(model), attention=attention_layout(c))


def test_save_load_round_trip_keeps_only_the_draft_weights(tmp_path):
    model = target()
    draft = init_weights(DraftHead(model), std=0.1, seed=3)
    draft.save(tmp_path / "d", info(model))
    loaded = DraftHead.load(tmp_path / "d", model)
    for (name, a), (_, b) in zip(draft.state_dict().items(), loaded.state_dict().items()):
        assert not name.startswith("_target") and torch.equal(a, b)
    assert "embed_tokens" not in json.dumps(list(draft.state_dict()))  # shared with the target, not saved
    ids, pos = torch.tensor([3, 4]), torch.tensor([1, 2])
    feats = torch.randn(2, 64)
    from reasonrl.models.model import CausalAttention

    torch.testing.assert_close(loaded(ids, feats, pos, CausalAttention(1, 2)), draft(ids, feats, pos, CausalAttention(1, 2)))


def test_a_draft_is_tied_to_its_target(tmp_path):
    model = target()
    DraftHead(model).save(tmp_path / "d", info(model))
    with pytest.warns(UserWarning, match="distilled against other weights"):
        DraftHead.load(tmp_path / "d", target(seed=1))
    with pytest.raises(ValueError, match="vocab 32 and hidden size 64"):
        DraftHead.load(tmp_path / "d", target(vocab=48))
    with pytest.raises(FileNotFoundError, match="not a draft checkpoint"):
        DraftHead.load(tmp_path, model)
    raw = json.loads((tmp_path / "d" / CONFIG_FILE).read_text())
    assert raw["format"] == "reasonrl-draft" and raw["target_fingerprint"] == fingerprint(model)


def test_a_draft_for_another_architecture_or_layer_shape_is_refused_by_name(tmp_path):
    """Same vocabulary and hidden size, other architecture or heads: a raw load_state_dict traceback before."""
    model = target()
    DraftHead(model).save(tmp_path / "d", info(model))
    llama = init_weights(DecoderLM(tiny_config("llama", vocab_size=32, hidden_size=64)), std=0.3)
    with pytest.raises(ValueError, match="made for a Qwen2ForCausalLM target; this one is a LlamaForCausalLM"):
        DraftHead.load(tmp_path / "d", llama)
    wide = init_weights(DecoderLM(tiny_config(vocab_size=32, hidden_size=64, intermediate_size=96)), std=0.3)
    with pytest.raises(ValueError, match="does not fit this target's layer shape.*mlp"):
        DraftHead.load(tmp_path / "d", wide)


def test_a_draft_for_another_split_of_the_same_width_into_heads_is_refused(tmp_path):
    """4 heads of 16 (2 KV heads) and 8 of 8 (4 KV heads) have the same projection shapes: the draft
    loaded with a warning about other weights and ran its layer split the target's way."""
    model = target()
    DraftHead(model).save(tmp_path / "d", info(model))
    split = init_weights(DecoderLM(tiny_config(vocab_size=32, hidden_size=64, num_heads=8, num_kv_heads=4)), std=0.3)
    with pytest.raises(ValueError, match=r"\[heads, KV heads, head size\] \[4, 2, 16\]; this target has \[8, 4, 8\]"):
        DraftHead.load(tmp_path / "d", split)


def test_the_same_target_in_bfloat16_is_the_same_target():
    model = target()
    assert fingerprint(model) == fingerprint(model.to(torch.bfloat16))  # was a "distilled against other weights" warning


def test_distillation_loss_matches_its_definition_on_one_row():
    model = target()
    draft = DraftHead(model)
    ids = torch.tensor([[5, 6, 7]])
    cfg = DistillConfig(feature_noise=0.0)
    loss, parts = distillation_loss(draft, ids, torch.tensor([2]), cfg)  # length 2: only row 0 counts
    with torch.no_grad():
        f = model.forward_padded(ids)[0]
        from reasonrl.models.model import CausalAttention

        out = draft(ids[0, 1:2], f[:1], torch.tensor([1]), CausalAttention(1, 1))
        ce = -(model.compute_logits(f[1]).softmax(-1) * model.compute_logits(out[0]).log_softmax(-1)).sum()
        l1 = torch.nn.functional.smooth_l1_loss(out[0], f[1])
    assert loss.item() == pytest.approx((0.1 * ce + 1.0 * l1).item(), rel=1e-5)
    assert parts["ce"] == pytest.approx(ce.item(), rel=1e-5)


def test_online_distillation_raises_the_accepted_length():
    model = target(vocab=24)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 24, (6,), generator=g).tolist() for _ in range(64)]
    cfg = DistillConfig(steps=40, prompts_per_step=8, max_new_tokens=24, temperature=0.0, lr=5e-3, eval_every=20)
    saved = []  # run_distill saves here, so a killed run keeps its last evaluated draft
    draft, history = distill_draft(model, prompts[8:], prompts[:8], cfg, engine_options={"kv_cache_memory": 1 << 22},
                                   on_eval=lambda d, h: saved.append(h[-1]["step"]))
    assert saved == [20, 40]
    from reasonrl.engine.spec.distill import accepted_length
    from reasonrl.engine import LLMEngine
    from reasonrl.engine.config import EngineConfig

    untrained = LLMEngine(model, None, EngineConfig(kv_cache_memory=1 << 22), draft=DraftHead(model))
    before = accepted_length(untrained, prompts[:8], 24)
    assert [row["step"] for row in history] == [20, 40]
    assert history[-1]["accepted_length"] > before + 0.2  # 1.41 untrained, about 1.8 after 40 steps
    assert history[-1]["loss"] < history[0]["loss"]


def test_distill_draft_cli_saves_a_loadable_draft_and_its_log(tmp_path, tokenizer):
    from reasonrl.cli import main
    from reasonrl.models.loader import load_model
    from reasonrl.models.tiny import make_checkpoint

    ckpt = make_checkpoint(tmp_path / "policy", "qwen2", tokenizer, hidden_size=32, num_layers=1)
    out = tmp_path / "draft"
    assert main(["distill-draft", str(ckpt), "--out", str(out), "--steps", "4", "--eval-every", "2",
                 "--prompts-per-step", "4", "--max-new-tokens", "8", "--num-prompts", "16", "--eval-prompts", "4"]) == 0
    log = [json.loads(line) for line in (out / "distill_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == [2, 4] and all(row["accepted_length"] >= 1 for row in log)
    raw = json.loads((out / CONFIG_FILE).read_text())
    assert raw["steps"] == 4 and raw["accepted_length"] == log[-1]["accepted_length"]
    DraftHead.load(out, load_model(ckpt, "cpu"))  # no warning: same target


def test_distill_init_goes_on_from_the_draft_it_loads(tmp_path, tokenizer):
    """--init retrained on the first run's prompts and seeds again and replaced its log, numbered from 1."""
    from reasonrl.cli import main
    from reasonrl.engine.spec import distill
    from reasonrl.models.tiny import make_checkpoint

    ckpt = make_checkpoint(tmp_path / "policy", "qwen2", tokenizer, hidden_size=32, num_layers=1)
    seen, generate = [], distill.generate
    distill.generate = lambda engine, prompts, params: seen.append(params.seed) or generate(engine, prompts, params)
    try:
        args = ["distill-draft", str(ckpt), "--steps", "2", "--eval-every", "2", "--prompts-per-step", "4",
                "--max-new-tokens", "8", "--num-prompts", "16", "--eval-prompts", "2"]
        assert main([*args, "--out", str(tmp_path / "d")]) == 0
        first, seen[:] = [s for s in seen if s is not None], []
        assert main([*args, "--out", str(tmp_path / "d"), "--init", str(tmp_path / "d")]) == 0
    finally:
        distill.generate = generate
    assert not set(first) & {s for s in seen if s is not None}  # other responses than the first run's
    log = [json.loads(line) for line in (tmp_path / "d" / "distill_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == [2, 4]
    assert json.loads((tmp_path / "d" / CONFIG_FILE).read_text())["steps"] == 4


@pytest.mark.parametrize("option, value", [("grad_clip", -1.0), ("grad_clip", 0.0), ("logit_weight", -1.0),
                                           ("feature_weight", float("nan")), ("feature_noise", -0.1),
                                           ("gate_weight", float("nan")), ("lr", float("nan")),
                                           ("temperature", float("nan"))])
def test_distill_options_that_train_away_from_the_target_are_refused(option, value):
    with pytest.raises(ValueError, match=f"distill: {option} must be a finite number"):
        DistillConfig(**{option: value})
    with pytest.raises(ValueError, match="nothing to learn"):
        DistillConfig(logit_weight=0.0, feature_weight=0.0)


def test_engine_switches_are_booleans_and_draft_options_need_a_draft():
    from reasonrl.engine import LLMEngine
    from reasonrl.engine.config import EngineConfig

    for option, value in (("draft_adaptive", "no"), ("draft_compile", "false"), ("cpu_draft_kernel", "off")):
        with pytest.raises(ValueError, match=f"EngineConfig.{option} must be true or false"):
            EngineConfig(**{option: value})
    for option in ("draft_top_k", "draft_max_batch", "draft_explore_every"):
        with pytest.raises(ValueError, match=f"EngineConfig.{option} must be a"):
            EngineConfig(**{option: True})
    with pytest.warns(UserWarning, match="draft_depth, draft_sampling set without a draft"):
        LLMEngine(target(), None, EngineConfig(draft_depth=5, draft_sampling="residual", kv_cache_memory=1 << 20))


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "llama"])
def test_a_catch_up_computes_the_newest_rows_of_the_whole_layer(family):
    """`decode_newest`: each sequence's newest row's output and every row's key and value are those
    of the whole layer over all rows (one layer: a row's key and value are its own), with biases,
    Qwen3's per-head norms and committed rows before the new ones. Fails if a row's key or value
    depended on the rows before it, or if the newest row missed some of its context."""
    from reasonrl.engine.spec.draft_state import DraftState, NewestRowAttention
    from tests.spec.test_padded_attention import catch_up_segments, segment_attention

    model = init_weights(DecoderLM(tiny_config(family, vocab_size=32, hidden_size=64)), std=0.3, seed=0)
    draft = init_weights(DraftHead(model), std=0.3, seed=1)
    c, g = draft.config, torch.Generator().manual_seed(2)
    states, lengths = [], [3, 1, 40]
    for n in (7, 0, 2):
        st = DraftState.at(0)
        if n:
            st.cache.append(torch.randn(n, c.num_kv_heads, c.head_dim, generator=g),
                            torch.randn(n, c.num_kv_heads, c.head_dim, generator=g))
        states.append(st)
    x = torch.randn(sum(lengths), c.hidden_size, generator=g)
    positions = torch.cat([torch.arange(st.cache.len + 1, st.cache.len + 1 + n) for st, n in zip(states, lengths)])
    newest = torch.tensor(lengths).cumsum(0) - 1
    no_rows = torch.empty(0, c.num_kv_heads, c.head_dim)

    class Reference:  # the whole layer's attention, recording every row's key and value
        def __call__(self, layer, q, k, v):
            self.k, self.v = k, v
            return segment_attention(catch_up_segments(states, lengths, no_rows), q, k, v)

    with torch.no_grad():
        ref = Reference()
        want = draft.decode(x, positions, ref)[newest]
        out, k, v = draft.decode_newest(x, positions, newest, NewestRowAttention(states, lengths, no_rows))
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(k, ref.k, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(v, ref.v, atol=1e-6, rtol=1e-6)


def test_distill_refuses_an_out_path_that_is_not_a_draft_before_training(tmp_path, capsys):
    """It trained until the first evaluation, then died on the save with a FileExistsError."""
    from reasonrl.cli import main

    (tmp_path / "afile").write_text("")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("keep")
    for out in ("afile", "notes"):
        assert main(["distill-draft", "reasonrl/demo/policy", "--out", str(tmp_path / out), "--steps", "1"]) == 2
        assert "is not a draft directory" in capsys.readouterr().err
    assert (tmp_path / "notes" / "a.txt").read_text() == "keep"


def test_distill_refuses_image_prompts_for_a_text_only_target(tmp_path, capsys):
    """A text-only target on an image environment was distilled on the Python repr of the pixel
    arrays (the template rendered `[{'type': 'image', 'image': array(...`)."""
    from reasonrl.cli import main

    out = tmp_path / "draft"
    assert main(["distill-draft", "reasonrl/demo/policy", "--out", str(out), "--env", "shapes:?image_size=64",
                 "--steps", "1", "--num-prompts", "2", "--eval-prompts", "0"]) == 2
    assert "these messages hold images, but the model is text-only" in capsys.readouterr().err
    assert not (out / CONFIG_FILE).exists()


def test_an_older_drafts_log_is_numbered_to_end_at_its_step_count(tmp_path):
    """A draft continued with --init before today: config steps 600, its (replaced) log numbered 100-300."""
    from reasonrl.engine.spec.distill import _earlier_log

    (tmp_path / "distill_log.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (100, 200, 300)))
    assert [r["step"] for r in _earlier_log(tmp_path, 600)] == [400, 500, 600]
    assert [r["step"] for r in _earlier_log(tmp_path, 300)] == [100, 200, 300]
    assert _earlier_log(tmp_path / "none", 10) == []


@pytest.mark.parametrize("at", ["weights", "config"])
def test_a_kill_mid_save_keeps_the_last_whole_draft(tmp_path, monkeypatch, at):
    """save_file wrote draft.safetensors in place: a kill mid-write left half a file (a SafetensorError
    traceback from `generate --draft` and `--init`), a kill after it step-4 weights under step 2's config."""
    from dataclasses import replace
    from pathlib import Path

    import safetensors.torch

    from reasonrl.engine.spec.draft import read_info

    model = target()
    old, new = init_weights(DraftHead(model), std=0.1, seed=3), init_weights(DraftHead(model), std=0.1, seed=4)
    old.save(tmp_path / "d", replace(info(model), steps=2))
    write = safetensors.torch.save_file

    def killed(tensors, file, *args, **kwargs):
        write(tensors, file, *args, **kwargs)
        if at == "weights":  # killed with the file half written
            Path(file).write_bytes(Path(file).read_bytes()[: Path(file).stat().st_size // 2])
        raise Killed

    monkeypatch.setattr(safetensors.torch, "save_file", killed)
    with pytest.raises(Killed):
        new.save(tmp_path / "d", replace(info(model), steps=4))
    loaded = DraftHead.load(tmp_path / "d", model)
    assert read_info(tmp_path / "d").steps == 2
    assert all(torch.equal(a, b) for a, b in zip(old.state_dict().values(), loaded.state_dict().values()))


def test_an_unreadable_draft_is_one_error_naming_its_file(tmp_path, capsys):
    """A cut draft.safetensors was a raw SafetensorError traceback from `generate --draft` and `--init`."""
    import shutil

    from reasonrl.cli import main
    from reasonrl.models.loader import CheckpointError

    draft = tmp_path / "draft"
    shutil.copytree("reasonrl/demo/draft", draft)
    weights = draft / "draft.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    from reasonrl.models.loader import load_model

    with pytest.raises(CheckpointError, match=f"cannot read {weights}: SafetensorError"):
        DraftHead.load(draft, load_model("reasonrl/demo/policy", "cpu"))
    capsys.readouterr()
    assert main(["generate", "--model", "reasonrl/demo/policy", "--device", "cpu", "--draft", str(draft), "1+1"]) == 2
    assert capsys.readouterr().err.strip().startswith(f"reasonrl generate: error: cannot read {weights}")
    (draft / CONFIG_FILE).write_text('{"format": "reasonrl-dr')
    assert main(["distill-draft", "reasonrl/demo/policy", "--out", str(tmp_path / "d2"), "--init", str(draft),
                 "--num-prompts", "4", "--eval-prompts", "0", "--device", "cpu"]) == 2
    assert f"cannot read {draft / CONFIG_FILE}: JSONDecodeError" in capsys.readouterr().err


def test_distill_into_a_saved_draft_is_refused_without_init_or_overwrite(tmp_path, tokenizer, capsys):
    """Rerunning the command after Ctrl-C trained from step 0 over the draft it had saved."""
    from reasonrl.cli import main
    from reasonrl.models.tiny import make_checkpoint

    ckpt = make_checkpoint(tmp_path / "policy", "qwen2", tokenizer, hidden_size=32, num_layers=1)
    out = tmp_path / "d"
    args = ["distill-draft", str(ckpt), "--out", str(out), "--steps", "2", "--eval-every", "2", "--prompts-per-step",
            "4", "--max-new-tokens", "8", "--num-prompts", "16", "--eval-prompts", "2"]
    assert main(args) == 0
    saved = (out / "draft.safetensors").read_bytes()
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"holds a draft (2 steps): continue it with --init {out}" in err and "--overwrite" in err
    assert (out / "draft.safetensors").read_bytes() == saved
    assert main([*args, "--overwrite"]) == 0  # afresh: step 2 again, not 4
    assert json.loads((out / CONFIG_FILE).read_text())["steps"] == 2
    assert main([*args, "--init", str(out), "--overwrite"]) == 2
    assert "--overwrite would delete the draft --init" in capsys.readouterr().err


def test_an_interrupted_distill_prints_the_command_that_continues_it(tmp_path, tokenizer, capsys):
    """Ctrl-C said "nothing was saved since the last checkpoint", with a draft saved and no word of --init."""
    import shlex

    from reasonrl.cli import main
    from reasonrl.engine.spec import distill
    from reasonrl.models.tiny import make_checkpoint

    ckpt = make_checkpoint(tmp_path / "policy", "qwen2", tokenizer, hidden_size=32, num_layers=1)
    out = tmp_path / "d"
    calls, generate = [], distill.generate

    def interrupted_at_step_3(engine, prompts, params):
        calls.append(params.temperature)
        if [t for t in calls if t != 0] == [1.0] * 3:  # the third step's responses (eval decodes greedily)
            raise KeyboardInterrupt
        return generate(engine, prompts, params)

    distill.generate = interrupted_at_step_3
    try:
        assert main(["distill-draft", str(ckpt), "--out", str(out), "--steps", "4", "--eval-every", "2",
                     "--prompts-per-step", "4", "--max-new-tokens", "8", "--num-prompts", "16", "--eval-prompts", "2",
                     "--lr", "0.002"]) == 130
    finally:
        distill.generate = generate
    err = capsys.readouterr().err
    assert f"interrupted; the draft of step 2 is saved in {out}; to train the rest of it, continue with:" in err
    command = shlex.split(err.strip().splitlines()[-1])
    assert command[:3] == ["reasonrl", "distill-draft", str(ckpt)] and "--lr" in command
    assert command[command.index("--init") + 1] == str(out) and command[command.index("--steps") + 1] == "2"
    assert main(command[1:]) == 0
    assert [json.loads(line)["step"] for line in (out / "distill_log.jsonl").read_text().splitlines()] == [2, 4]


def test_a_draft_distils_in_float32_where_loading_keeps_the_checkpoints_dtype(tmp_path, tokenizer, monkeypatch):
    """On a GPU the target loaded in its checkpoint's bfloat16, and the draft trained in it: at lr 1e-5 one AdamW
    step moved 3.7% of its weights. That loading default is imitated here on the CPU."""
    from safetensors.torch import load_file

    from reasonrl.cli import main
    from reasonrl.models import load_model, loader
    from reasonrl.models.tiny import make_checkpoint

    fp32 = make_checkpoint(tmp_path / "fp32", "qwen2", tokenizer, hidden_size=32, num_layers=1)
    ckpt = loader.save_model(load_model(fp32, dtype=torch.bfloat16), tmp_path / "policy", tokenizer)
    real = loader.resolve_dtype
    monkeypatch.setattr(loader, "resolve_dtype", lambda dtype, device, cfg=None: real(
        cfg.torch_dtype if dtype in (None, "auto") and cfg is not None else dtype, device, cfg))
    assert main(["distill-draft", str(ckpt), "--out", str(tmp_path / "d"), "--steps", "1", "--eval-every", "1",
                 "--prompts-per-step", "2", "--max-new-tokens", "4", "--num-prompts", "4", "--eval-prompts", "1"]) == 0
    assert {t.dtype for t in load_file(str(tmp_path / "d" / "draft.safetensors")).values()} == {torch.float32}
