"""Training a vision-language policy: SFT and the RL update see the images; the vision tower can be frozen."""

import json
from pathlib import Path

import pytest
import torch

from reasonrl.envs.base import Environment
from reasonrl.envs.shapes import ShapesVQAConfig, ShapesVQAEnvironment
from reasonrl.models import Tokenizer, load_model
from reasonrl.models.chat import ChatEncoder, multimodal, token_ids
from reasonrl.models.tiny_vlm import make_vlm_checkpoint, make_vlm_tokenizer
from reasonrl.rl.batch import collate, response_logprobs
from reasonrl.rl.config import load_config
from reasonrl.models.qwen2_5_vl.prompt import message_images
from reasonrl.rl.sft import SFTConfig, SFTTrainer, load_sft_data, sft_example, sft_loss, train_sft
from reasonrl.rl.update import PolicyUpdate
from reasonrl.rollout.sample import Sample
from reasonrl.vision.world import write_png


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory):
    corpus = ["How many circles are there? Put the answer in \\boxed{}. red blue 1 2 3 yes no"] * 20
    return make_vlm_checkpoint(tmp_path_factory.mktemp("vlm") / "m", make_vlm_tokenizer(corpus, vocab_size=420))


def env():
    return ShapesVQAEnvironment(ShapesVQAConfig(families=("count", "colour"), max_objects=3, size=16))


def test_vqa_prompts_hold_images_and_the_reward_reads_boxed_answers():
    e = env()
    train, held = e.prompts(8), e.prompts(8, split="eval")
    assert not {p.id for p in train} & {p.id for p in held}
    p = train[0]
    assert p.messages[0]["content"][0]["image"].shape == (112, 112, 3)
    assert e.reward(p, f"I count them. \\boxed{{{p.answer}}}") == 1.0
    assert e.reward(p, "\\boxed{") == 0.0 and e.reward(p, None) == 0.0 and e.reward(p, "z" * 100_000) == 0.0
    assert "accuracy/count" in e.metrics(train, ["x"] * 8, [0.0] * 8)


def test_shapes_extracts_the_answer_its_reward_reads():
    """`extract` was the base class's: every sample's answer was unknown (eval's parse failures blank)."""
    e = env()
    p = next(q for q in e.prompts(8) if q.metadata["answer_type"] == "number")
    assert e.extract(p, f"There are {p.answer}. \\boxed{{{p.answer}}}") == p.answer
    assert e.extract(p, "\\boxed{3} \\boxed{two}") == "2"  # the last box, in the canonical form `score` compares
    assert e.extract(p, "\\boxed{") is None and e.extract(p, None) is None and e.extract(p, "z" * 100_000) is None
    assert type(e).extract is not Environment.extract  # the harness reports parse failures for overriders only


def test_the_encoder_gives_images_to_a_vlm_and_refuses_them_to_a_text_model(vlm_dir, tokenizer):
    vlm = load_model(vlm_dir)
    prompt = env().prompts(1)[0]
    inp = ChatEncoder(Tokenizer.from_dir(vlm_dir), vlm)(prompt.messages)
    assert multimodal(inp) is not None and multimodal(inp).num_images == 1
    assert len(token_ids(inp)) > 16  # the image's 16 merged tokens are in the ids
    with pytest.raises(ValueError, match="text-only"):
        ChatEncoder(tokenizer)(prompt.messages)


def test_sft_reads_images_from_the_data_file_and_can_freeze_the_vision_tower(vlm_dir, tmp_path):
    rows = []
    (tmp_path / "images").mkdir()
    for i, p in enumerate(env().prompts(12)):
        write_png(p.messages[0]["content"][0]["image"], tmp_path / "images" / f"{i}.png")
        content = [{"type": "image", "image": f"images/{i}.png"}, p.messages[0]["content"][1]]
        rows.append({"prompt": [{"role": "user", "content": content}], "response": f"\\boxed{{{p.answer}}}"})
    data = tmp_path / "vqa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    model = load_model(vlm_dir)
    samples = load_sft_data(data, ChatEncoder(Tokenizer.from_dir(vlm_dir), model))
    assert all(len(message_images(s.prompt)) == 1 for s in samples)
    vision = {k: v.clone() for k, v in model.visual.state_dict().items()}
    decoder = model.layers[0].mlp.down_proj.weight.clone()
    losses = train_sft(model, samples, SFTConfig(epochs=8, lr=3e-3, samples_per_step=6, freeze_vision=True))
    assert losses[-1] < 0.7 * losses[0]
    assert all(torch.equal(vision[k], v) for k, v in model.visual.state_dict().items())  # frozen
    assert not torch.equal(decoder, model.layers[0].mlp.down_proj.weight)  # the decoder trained
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": [{"role": "user", "content": [{"type": "image", "image": "nope.png"}]}],
                               "response": "x"}) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        load_sft_data(bad, ChatEncoder(Tokenizer.from_dir(vlm_dir), model))


def _image_rows(tmp_path, n=4):
    """(rows naming their images as paths, image_url paths and data: URLs, the same rows with the images as arrays)"""
    import base64

    rows, eager = [], []
    (tmp_path / "images").mkdir()
    for i, p in enumerate(env().prompts(n)):
        image, question = p.messages[0]["content"]
        write_png(image["image"], tmp_path / "images" / f"{i}.png")
        url = f"images/{i}.png" if i % 3 else "data:image/png;base64," + base64.b64encode(
            (tmp_path / "images" / f"{i}.png").read_bytes()).decode()
        part = {"type": "image", "image": f"images/{i}.png"} if i % 2 else {"type": "image_url", "image_url": {"url": url}}
        rows.append({"prompt": [{"role": "user", "content": [part, question]}], "response": f"\\boxed{{{p.answer}}}"})
        eager.append(([{"role": "user", "content": [image, question]}], rows[-1]["response"]))
    (tmp_path / "vqa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path / "vqa.jsonl", eager


def test_sft_examples_keep_their_image_paths_not_pixels_and_train_as_before(vlm_dir, tmp_path):
    """Each example held its preprocessed float pixels: 4.6 MB per row of one 448px image, 46 GB for
    10k rows before training started. Now the pixels are built per batch, with the same tokens and loss."""
    encoder = ChatEncoder(Tokenizer.from_dir(vlm_dir), load_model(vlm_dir))
    data, eager = _image_rows(tmp_path)
    samples = load_sft_data(data, encoder)
    assert all(s.multimodal is None and all(isinstance(i, str) for i in message_images(s.prompt)) for s in samples)
    eager = [sft_example(prompt, response, encoder) for prompt, response in eager]  # pixels held, as before
    assert all(e.multimodal is not None for e in eager)
    assert [s.prompt_ids for s in samples] == [e.prompt_ids for e in eager]
    assert [s.response_ids for s in samples] == [e.response_ids for e in eager]
    losses = []
    for examples in (samples, eager):
        torch.manual_seed(0)
        model = load_model(vlm_dir)
        losses.append(train_sft(model, examples, SFTConfig(epochs=2, lr=3e-3, samples_per_step=2)))
        losses.append(sft_loss(model, examples)[0].item())
    assert losses[0] == losses[2] and losses[1] == losses[3]


def test_sft_preprocesses_the_next_batchs_images_while_a_step_computes(vlm_dir, tmp_path, monkeypatch):
    """Built per batch, the images cost CPU time in the training loop (12 ms a 448 px PNG, 108 ms at
    1024 px): every batch after the first is preprocessed on a worker thread during the step before."""
    import threading

    from reasonrl.rl import sft

    data, _ = _image_rows(tmp_path)
    samples = load_sft_data(data, ChatEncoder(Tokenizer.from_dir(vlm_dir), load_model(vlm_dir)))
    built, images_of = [], sft.example_images

    def example_images(model, sample):
        built.append((samples.index(sample), threading.current_thread().name.startswith("sft-images")))
        return images_of(model, sample)

    monkeypatch.setattr(sft, "example_images", example_images)
    trainer = SFTTrainer(load_model(vlm_dir), samples, SFTConfig(epochs=3, lr=3e-3, samples_per_step=2))
    order = []
    for _ in range(trainer.steps):
        order += trainer._next(2)
        trainer.step()
    assert trainer.steps >= 3 and [i for i, _ in built] == order  # each batch built once, in the order trained
    assert [ahead for _, ahead in built] == [False] * 2 + [True] * (len(order) - 2)


def test_chat_encoder_reads_image_url_parts_and_names_bad_image_parts(vlm_dir, tmp_path, tokenizer):
    """image_url parts were dropped (text only, even for a file that does not exist); an image part
    without an image was a bare TypeError, with no file:line."""
    encoder = ChatEncoder(Tokenizer.from_dir(vlm_dir), load_model(vlm_dir))
    image, question = env().prompts(1)[0].messages[0]["content"]
    write_png(image["image"], tmp_path / "a.png")
    chat = lambda part: [{"role": "user", "content": [question, part]}]  # noqa: E731
    by_image = encoder(chat(image))
    by_url = encoder(chat({"type": "image_url", "image_url": {"url": str(tmp_path / "a.png"), "detail": "low"}}))
    assert by_url.input_ids == by_image.input_ids and torch.equal(by_url.pixel_values, by_image.pixel_values)
    with pytest.raises(FileNotFoundError, match="nope.png"):
        encoder(chat({"type": "image_url", "image_url": {"url": "nope.png"}}))
    with pytest.raises(ValueError, match="text-only"):
        ChatEncoder(tokenizer)(chat({"type": "image_url", "image_url": {"url": "a.png"}}))
    for i, part in enumerate([{"type": "image"}, {"type": "image", "image": None}, {"type": "image", "image": 5}]):
        (tmp_path / f"bad{i}.jsonl").write_text(json.dumps({"prompt": chat(part), "response": "x"}) + "\n")
        with pytest.raises(ValueError, match=f"bad{i}.jsonl:1: messages.0.content.1: an image part needs"):
            load_sft_data(tmp_path / f"bad{i}.jsonl", encoder)


def test_the_sft_command_trains_a_vlm_on_image_rows(vlm_dir, tmp_path):
    """`reasonrl sft` read the data with the bare tokenizer: every row with an image was refused as
    meant for a text-only model, whatever the checkpoint."""
    from reasonrl.cli import main

    (tmp_path / "images").mkdir()
    rows = []
    for i, p in enumerate(env().prompts(4)):
        write_png(p.messages[0]["content"][0]["image"], tmp_path / "images" / f"{i}.png")
        content = [{"type": "image", "image": f"images/{i}.png"}, p.messages[0]["content"][1]]
        rows.append({"prompt": [{"role": "user", "content": content}], "response": f"\\boxed{{{p.answer}}}"})
    (tmp_path / "vqa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["sft", "--model", str(vlm_dir), "--data", str(tmp_path / "vqa.jsonl"), "--out", str(tmp_path / "run"),
                 "--samples-per-step", "2", "--device", "cpu", "--freeze-vision"]) == 0
    assert (tmp_path / "run" / "config.json").is_file()


def test_the_rl_update_recomputes_logprobs_with_the_images(vlm_dir, tmp_path):
    """The trainer's log-probs of a response depend on the image it was sampled for, and equal a
    forward of the VLM over prompt + response with that image."""
    model, tok = load_model(vlm_dir), Tokenizer.from_dir(vlm_dir)
    encoder = ChatEncoder(tok, model)
    prompts = env().prompts(2)
    samples = []
    for p in prompts:
        inp = encoder(p.messages)
        samples.append(Sample(prompt_ids=token_ids(inp), response_ids=tok.encode("\\boxed{2}"), multimodal=multimodal(inp),
                              logprobs=[0.0] * 4, versions=[0] * 4))
    batch = collate(samples, [1.0, -1.0], tok.pad_token_id, "cpu")
    with torch.no_grad():
        logp = response_logprobs(model, batch)
        text, other_image = prompts[0].messages[0]["content"][1], prompts[1].messages[0]["content"][0]
        inp = encoder([{"role": "user", "content": [other_image, text]}])  # the same question about another image
        assert token_ids(inp) == samples[0].prompt_ids
        swapped = collate([Sample(**{**vars(samples[0]), "multimodal": multimodal(inp)})], [1.0], tok.pad_token_id, "cpu")
        other = response_logprobs(model, swapped)
        alone = model.forward_padded(batch.input_ids[:1], [samples[0].multimodal])
    assert not torch.allclose(logp[0], other[0])  # the image matters
    first = model.compute_logits(alone[0, len(samples[0].prompt_ids) - 1]).log_softmax(-1)[samples[0].response_ids[0]]
    torch.testing.assert_close(logp[0, 0], first)
    cfg = load_config(None, {"model.path": str(vlm_dir), "train.run_dir": str(tmp_path), "model.freeze_vision": True})
    update = PolicyUpdate(model, cfg, tok.pad_token_id)
    vision = {k: v.clone() for k, v in model.visual.state_dict().items()}
    stats = update(samples, [1.0, -1.0], version=0)
    assert stats["optimizer_steps"] == 1 and stats["grad_norm"] > 0
    assert all(torch.equal(vision[k], v) for k, v in model.visual.state_dict().items())


def test_the_vlm_policy_script_builds_a_loadable_checkpoint(tmp_path):
    from reasonrl.demo.vlm_policy import VLMPolicyConfig, caption_row, make_vlm_policy, vqa_rows

    rows = vqa_rows(60, VLMPolicyConfig(lazy=1.0, lazy_from=3))
    busy = [r for r in rows if r["objects"] >= 3]
    assert busy and all(r["response"].startswith("\\boxed{") for r in busy)  # a guess, no description
    assert all("background" in r["response"] for r in rows if r["objects"] < 3)  # the caption, then the answer
    a, b = caption_row(5, 0), caption_row(5, 0)  # drawn examples are made again on each access: the same ones
    assert a["response"] == b["response"] and (a["prompt"][0]["content"][0]["image"] == b["prompt"][0]["content"][0]["image"]).all()
    assert caption_row(6, 0)["response"] != a["response"]
    path = make_vlm_policy(tmp_path / "vlm", VLMPolicyConfig(tower_steps=2, caption_steps=2, vqa_steps=2, vqa_problems=40,
                                                             hidden_size=96, num_layers=3, num_heads=6, num_kv_heads=3))
    model = load_model(path)
    cfg = json.loads((path / "config.json").read_text())  # the decoder at the sizes asked for
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"]) == (96, 3, 6, 3)
    prompt = ShapesVQAEnvironment(ShapesVQAConfig(families=("count",), image_size=224, max_objects=4, size=2)).prompts(1)[0]
    inp = ChatEncoder(Tokenizer.from_dir(path), model)(prompt.messages)
    assert multimodal(inp).num_images == 1


def test_grpo_rolls_out_with_images_and_the_engine_and_trainer_agree(vlm_dir, tmp_path):
    """The whole loop on a VLM: APRIL rollouts with images through the engine, rewards from the
    shapes world, an update whose log-probs (with the images) equal the engine's on fresh tokens,
    held-out evaluation, a checkpoint."""
    from reasonrl.rl.metrics import read_metrics
    from reasonrl.rl.trainer import Trainer

    cfg = load_config(None, {"model.path": str(vlm_dir), "train.run_dir": str(tmp_path), "train.steps": 2,
                             "env.name": "shapes:?families=count,colour&max_objects=3", "env.eval_size": 4,
                             "rollout.prompts_per_step": 2, "rollout.samples_per_prompt": 3,
                             "rollout.over_provision": 2.0, "rollout.max_tokens": 12,
                             "engine.kv_cache_memory": "16MiB", "engine.max_num_seqs": 8, "model.freeze_vision": True})
    trainer = Trainer(cfg, env(), load_model(vlm_dir), Tokenizer.from_dir(vlm_dir), console=False)
    metrics = trainer.train()
    trainer.close()
    rows = [r for r in read_metrics(tmp_path) if "reward_mean" in r]
    assert len(rows) == 2 and all(r["dropped_groups"] == 0 for r in rows)
    assert all(r["logprob_mismatch"] < 1e-4 for r in rows)  # engine and trainer see the same image
    assert "eval_accuracy/count" in metrics and (tmp_path / "checkpoints" / "step_000002").is_dir()
    assert trainer.backend.stats()["images_encoded"] > 0


def test_eval_of_a_vlm_locally_and_over_http_gives_the_same_samples(vlm_dir, tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "engine"))
    from serve_helpers import Server

    from reasonrl.engine import LLMEngine
    from reasonrl.engine.server import ServeConfig
    from reasonrl.eval import run_eval

    options = dict(n=2, temperature=1.0, max_tokens=8, limit=4, seed=3, progress=False)
    local = run_eval(env(), model=str(vlm_dir), out=tmp_path / "local",
                     engine_kwargs={"kv_cache_memory": "16MiB", "device": "cpu"}, **options)
    server = Server(LLMEngine.from_pretrained(vlm_dir, "cpu", kv_cache_memory="16MiB"), ServeConfig(served_model_name="vlm"))
    try:
        remote = run_eval(env(), model="vlm", base_url=server.url, out=tmp_path / "remote", **options)
    finally:
        server.stop()

    def samples(out):
        return sorted((r["problem_id"], r["sample"], r["response"]) for r in map(json.loads, (out / "samples.jsonl").open()))

    assert samples(tmp_path / "local") == samples(tmp_path / "remote")  # images sent as PNG data: URLs
    assert local["pass@1"] == remote["pass@1"]


def test_the_vlm_check_names_a_bad_checkpoint(tmp_path, capsys):
    from reasonrl.demo.vlm_policy import main

    for bad in (tmp_path / "missing", Path(__file__).parents[2] / "reasonrl/demo/policy"):  # absent; text-only
        with pytest.raises(SystemExit) as exit_:
            main(["--check", str(bad)])
        assert exit_.value.code == 2 and f"--check {bad}" in capsys.readouterr().err


def test_content_parts_the_model_cannot_read_are_refused_by_name(tokenizer):
    """An audio or video part was dropped by the chat template: the model answered without it."""
    for kind in ("input_audio", "video"):
        chat = [{"role": "user", "content": [{"type": "text", "text": "What is said?"}, {"type": kind}]}]
        with pytest.raises(ValueError, match=f"messages.0.content.1: content parts of type '{kind}' are not supported"):
            ChatEncoder(tokenizer)(chat)
    assert ChatEncoder(tokenizer)([{"role": "user", "content": [{"type": "text", "text": "hi"}]}])
