import json
import os
import statistics
from pathlib import Path

from reasonrl.cli import main


def test_bench_spec_cli_compares_plain_and_speculative_on_the_same_prompts(tmp_path):
    out = tmp_path / "spec.json"
    assert main(["bench", "spec", "--num-prompts", "3", "--max-tokens", "24", "--repeats", "2", "--concurrency", "1", "2",
                 "--draft-depth", "4", "--no-adaptive", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    for key in ("accepted_length", "speedup", "greedy_identical", "device", "draft_cost_ratio", "verify_cost_ratio"):
        assert key in r
    assert r["greedy_identical"] is True
    assert 1 < r["accepted_length"] <= 5  # depth 4: at most 4 drafts and the target's own token
    assert r["speedup"] == r["batch1"]["speedup"] == statistics.median(r["batch1"]["pairwise_speedups"])
    assert len(r["batch2"]["pairwise_speedups"]) == 2 and r["concurrency"] == [1, 2]
    assert r["batch2"]["cpu_speedup"] > 0  # on a CPU, the ratio of tokens per CPU-second too
    assert all(0 < r[f"batch{n}"]["speculation_time_share"] < 1 for n in (1, 2))  # the draft's and policy's time
    assert r["tree_steps_at_batch1"] > 0 and r["verify_cost_ratio"] > 0
    assert r["draft_kernel"] is True and r["forward_kernel"] is True  # CPU, fp32: the C++ kernels, the default


def test_bench_spec_can_measure_the_draft_and_the_forward_without_their_kernels(tmp_path):
    out = tmp_path / "spec.json"
    assert main(["bench", "spec", "--num-prompts", "3", "--max-tokens", "16", "--repeats", "1", "--concurrency", "1",
                 "--no-cpu-draft-kernel", "--no-cpu-forward-kernel", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["draft_kernel"] is False and r["forward_kernel"] is False
    assert r["greedy_identical"] is True and r["accepted_length"] > 1


def test_a_timer_counts_only_the_calls_it_is_told_to():
    import torch

    from reasonrl.bench.spec import Timer

    class Step:
        def run(self, trees=None):
            return {"verdicts": trees or {}}

    step = Step()
    timer = Timer(step, "run", torch.device("cpu"), counts=lambda args, kwargs, out: bool(out["verdicts"]))
    for trees in (None, {1: "tree"}, None, {2: "tree"}, None):
        step.run(trees=trees)
    assert timer.calls == 2 and timer.seconds > 0
    inner = Timer(step, "run", torch.device("cpu"))  # a second timer on the same method
    step.run()
    assert inner.calls == 1 and timer.calls == 2
    inner.remove()
    timer.remove()
    assert "run" not in vars(step) and step.run() == {"verdicts": {}}  # the class's method again: no timer left


def test_the_timed_run_leaves_the_engine_untimed():
    """Drafting shares and tree costs come from one more run with timers; the timed repeats run
    without them (the timers' Python slowed the speculative arm alone by about 5% at batch 1)."""
    from reasonrl.bench.spec import DEMO, _prompts, SpecBenchConfig, decode, timed_run
    from reasonrl.engine.config import EngineConfig
    from reasonrl.engine.llm_engine import LLMEngine
    from reasonrl.engine.spec.draft import DraftHead
    from reasonrl.models.loader import load_model

    target = load_model(DEMO / "policy", "cpu", None)
    prompts = _prompts(SpecBenchConfig(), DEMO / "policy", 3)
    engine = LLMEngine(target, None, EngineConfig(max_model_len=256, draft_adaptive=False),
                       draft=DraftHead.load(DEMO / "draft", target))
    run, overhead, (draft, verify) = timed_run(engine, prompts, 16, 1)
    assert len(overhead) == 3 and all(t >= 0 for t in overhead) and 0 < sum(overhead) < run.seconds
    assert draft[1] == verify[1] > 0  # steps with trees: the draft proposed and the target verified each
    for obj, name in ((engine.speculator, "propose"), (engine.speculator, "step_done"), (engine, "_collect_features"),
                      (engine.runner, "run")):
        assert name not in vars(obj), name
    assert decode(engine, prompts, 16, 1).outputs == run.outputs


def test_bench_spec_with_draft_max_batch_zero_never_drafts(tmp_path, capsys):
    """--draft-max-batch 0: the speculative engine carries its draft but never speculates, which
    measures what speculation costs when it is off."""
    out = tmp_path / "spec.json"
    assert main(["bench", "spec", "--num-prompts", "3", "--max-tokens", "16", "--repeats", "1", "--concurrency", "1", "2",
                 "--draft-max-batch", "0", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["greedy_identical"] is True and r["accepted_length"] == 0  # not one verification round
    # costs are per step with a tree: steps without one are not charged to trees (there are none)
    assert r["tree_steps_at_batch1"] == 0 and r["draft_cost_ratio"] == r["verify_cost_ratio"] == 0
    assert main(["bench", "spec", "--draft-max-batch", "-1"]) == 2
    assert "--draft-max-batch" in capsys.readouterr().err


def test_bench_spec_refuses_zero_repeats(capsys):
    assert main(["bench", "spec", "--repeats", "0"]) == 2
    assert "--repeats" in capsys.readouterr().err


def test_bench_spec_refuses_an_empty_concurrency_level(capsys):
    assert main(["bench", "spec", "--concurrency", "0"]) == 2
    assert "--concurrency" in capsys.readouterr().err


def test_another_target_needs_its_own_draft(tmp_path, capsys):
    """The shipped drafts fit the demo models' weights and widths: another target without --draft is
    refused by name (it used to load the demo's draft and fail on its width), a --vlm run for another
    target leaves out the arm it has no draft for, and a draft path that does not exist is named."""
    from reasonrl.bench.spec import DEMO, SpecBenchConfig
    from reasonrl.bench.spec_vlm import _drafts
    from reasonrl.models.tiny import make_checkpoint

    other = make_checkpoint(tmp_path / "other", hidden_size=64, num_layers=1)
    assert main(["bench", "spec", "--model", str(other), "--num-prompts", "1"]) == 2
    assert f"--model {other}: give its draft" in capsys.readouterr().err
    assert _drafts(SpecBenchConfig(model=str(tmp_path / "vlm"), draft=str(DEMO / "vlm_draft")), tmp_path / "vlm") == {
        "eaglevlm": DEMO / "vlm_draft", "specvlm": None}
    shipped = {"eaglevlm": DEMO / "vlm_draft", "specvlm": DEMO / "vlm_draft_compressed"}
    assert _drafts(SpecBenchConfig(), DEMO / "vlm") == shipped
    assert _drafts(SpecBenchConfig(), Path(os.path.relpath(DEMO / "vlm"))) == shipped  # the demo VLM by a relative path
    for flag in ("--draft", "--compressed-draft"):
        assert main(["bench", "spec", "--vlm", flag, str(tmp_path / "nowhere"), "--num-prompts", "1"]) == 2
        assert f"{flag} {tmp_path / 'nowhere'}: no such directory" in capsys.readouterr().err


def test_bench_spec_vlm_compares_plain_eaglevlm_and_specvlm_on_image_prompts(tmp_path):
    import torch

    from reasonrl.engine.spec.draft import DraftHead, DraftInfo, fingerprint
    from reasonrl.models.loader import load_model
    from reasonrl.models.tiny import init_weights
    from reasonrl.models.tiny_vlm import make_vlm_checkpoint, make_vlm_tokenizer
    from reasonrl.vision.spec.compressor import CompressorConfig
    from tests.models.vlm_common import CORPUS

    ckpt = make_vlm_checkpoint(tmp_path / "vlm", make_vlm_tokenizer(CORPUS, vocab_size=384), seed=1, std=0.2)
    target = load_model(ckpt, "cpu")
    c = target.config
    info = DraftInfo(c.architecture, c.vocab_size, c.hidden_size, fingerprint(target))
    init_weights(DraftHead(target), std=0.2, seed=2).save(tmp_path / "eagle", info)
    specvlm = init_weights(DraftHead(target, CompressorConfig(ratio=4)), std=0.2, seed=3)
    with torch.no_grad():
        specvlm.compressor.gate.bias.copy_(torch.tensor([0.0, 50.0, 0.0, 0.0, 0.0]))  # pool, whatever the question
    specvlm.save(tmp_path / "spec", DraftInfo(**{**info.__dict__, "compressor": {"ratio": 4}}))
    out = tmp_path / "vlm.json"
    assert main(["bench", "spec", "--vlm", "--model", str(ckpt), "--draft", str(tmp_path / "eagle"),
                 "--compressed-draft", str(tmp_path / "spec"), "--env", "shapes:?image_size=112&families=text,detail",
                 "--num-prompts", "4", "--concurrency", "1", "2", "--repeats", "1", "--max-tokens", "6",
                 "--no-adaptive", "--json", str(out)]) == 0  # a tree every step: the per-round costs below
    r = json.loads(out.read_text())
    assert r["greedy_identical"] is True and r["concurrency"] == [1, 2]
    assert sorted(r["plain_tokens_per_s"]) == ["1", "2"] and min(r["plain_tokens_per_s"].values()) > 0
    eagle, spec = r["eaglevlm"], r["specvlm"]
    assert eagle["visual_tokens_per_request"] == eagle["draft_visual_tokens_per_request"] == 16  # 112 px: 4 x 4 merged
    assert spec["draft_visual_tokens_per_request"] == 4 < eagle["draft_visual_tokens_per_request"]
    assert spec["draft_visual_gflops_per_request"] < eagle["draft_visual_gflops_per_request"]
    assert spec["text_only_rate_text"] == spec["text_only_rate_detail"] == 0.0  # the gate was set to pool
    assert spec["gate_questions_text"] + spec["gate_questions_detail"] == 8  # every held-out question, one image each
    assert eagle["accepted_length"] >= 1 and "batch2_speedup" in spec and spec["batch2_cpu_speedup"] > 0
    by = spec["accepted_length_by_branch"]  # every branch forced in turn on both families
    assert sorted(by) == ["detail", "text"] and all(list(b) == ["prune", "pool", "conv", "resampler", "text_only"]
                                                   and min(b.values()) >= 1 for b in by.values())
    assert spec["draft_visual_tokens_by_branch"]["detail"] == {"prune": 4, "pool": 4, "conv": 4, "resampler": 2,
                                                               "text_only": 0}  # the forced branch, not the gate's pool
    assert "accepted_length_by_branch" not in eagle
    assert all(0 < a[f"batch{n}_speculation_time_share"] < 1 for a in (eagle, spec) for n in (1, 2))
    # per-round costs as the text path reports them, and the batch-1 run split into prefill and decoding
    assert r["figures_at_concurrency"] == 1 and 0 < r["prefill_share"] < 1
    for a, path in ((eagle, tmp_path / "eagle"), (spec, tmp_path / "spec")):
        assert a["draft"] == str(path) and a["kept_per_round"] <= a["accepted_length"]
        assert a["tree_steps"] > 0 and a["draft_cost_ratio"] > 0 and a["verify_cost_ratio"] > 0
        assert 0 < a["prefill_share"] < 1 and a["decode_speedup"] > 0 and a["prefill_run_speedup"] > 0
        assert a["tree_tokens_by_batch"] == {}  # as for text: what the adaptive policy chose (off here)
    assert r["costs_in"] == "plain decode steps"
    assert main(["bench", "spec", "--vlm", "--model", str(ckpt), "--draft", str(tmp_path / "eagle"),
                 "--env", "shapes:?image_size=112", "--num-prompts", "2", "--concurrency", "2", "--repeats", "1",
                 "--max-tokens", "4", "--json", str(out)]) == 0
    r = json.loads(out.read_text())  # no batch 1: no prefill split (prefill and decode steps would mix)
    assert "prefill_share" not in r and "decode_speedup" not in r["eaglevlm"] and "specvlm" not in r
    assert r["costs_in"] == "plain tokens at 2 in flight, prefill included"


def test_the_batch1_split_and_the_round_costs_are_the_ratios_they_name():
    from reasonrl.bench.spec import round_costs
    from reasonrl.bench.spec_vlm import PrefillRun, _decode_figures

    runs = {"plain": PrefillRun(10.0, 4.0, 100), "eaglevlm": PrefillRun(8.0, 4.0, 100)}
    assert _decode_figures(runs, "eaglevlm") == {"prefill_share": 0.5, "decode_speedup": 1.5, "prefill_run_speedup": 1.25}
    # 4 rounds: the draft took 1 s and verification 2 s in all, plain decoding runs 8 steps a second
    assert round_costs([(1.0, 9), (2.0, 4)], 8.0) == {"tree_steps": 4, "draft_cost_ratio": 2.0, "verify_cost_ratio": 4.0}
    assert round_costs([(0.0, 0), (0.0, 0)], 8.0) == {"tree_steps": 0, "draft_cost_ratio": 0.0, "verify_cost_ratio": 0.0}


def test_the_prefill_timer_counts_the_steps_that_carry_a_prompt():
    """One request in flight: each prompt is prefilled in one step, and only those steps are counted."""
    from reasonrl.bench.spec import DEMO, _prompts, SpecBenchConfig, decode, prefill_timer
    from reasonrl.engine.config import EngineConfig
    from reasonrl.engine.llm_engine import LLMEngine
    from reasonrl.models.loader import load_model

    from reasonrl.engine.spec.draft import DraftHead

    target = load_model(DEMO / "policy", "cpu", None)
    prompts = _prompts(SpecBenchConfig(), DEMO / "policy", 3)
    plain = LLMEngine(target, None, EngineConfig(max_model_len=256))
    spec = LLMEngine(target, None, EngineConfig(max_model_len=256, draft_adaptive=False),  # a tree every decode step
                     draft=DraftHead.load(DEMO / "draft", target))
    for engine in (plain, spec):  # verification steps carry one scheduled token per sequence: not counted
        timer = prefill_timer(engine)
        run = decode(engine, prompts, 16, 1)
        timer.remove()
        assert timer.calls == len(prompts) and 0 < timer.seconds < run.seconds
    assert spec.stats()["spec_rounds"] > 0


def test_bench_spec_refuses_empty_or_conflicting_draft_flags(capsys):
    """`--draft ""` was the current directory to the --vlm path check and the demo draft to the text
    path; a draft given with --distill-steps was silently replaced by the distilled one."""
    for args, named in ((["--draft", ""], "--draft is empty"), (["--vlm", "--compressed-draft", " "], "--compressed-draft is empty"),
                        (["--distill-steps", "5", "--draft", "d"], "--draft and --distill-steps"),
                        (["--distill-steps", "-1"], "--distill-steps must be at least 0"),
                        (["--model", ""], "--model is empty")):
        assert main(["bench", "spec", *args]) == 2, args
        assert named in capsys.readouterr().err, args


def test_bench_spec_vlm_distills_both_drafts_first(tmp_path, monkeypatch):
    """--distill-steps with --vlm used to be ignored: now an EagleVLM draft and a SpecVLM one (the
    compressor in select mode) are distilled for the target, on the benchmark's image prompts,
    before the arms run (the distillation itself is `reasonrl distill-draft`'s, tested there; here
    it saves random drafts of the right kind)."""
    import torch

    import reasonrl.bench.spec_vlm as spec_vlm
    from reasonrl.engine.spec.draft import DraftHead, DraftInfo, fingerprint
    from reasonrl.models.loader import load_model
    from reasonrl.models.tiny import init_weights
    from reasonrl.models.tiny_vlm import make_vlm_checkpoint, make_vlm_tokenizer
    from reasonrl.vision.spec.compressor import CompressorConfig
    from tests.models.vlm_common import CORPUS

    ckpt = make_vlm_checkpoint(tmp_path / "vlm", make_vlm_tokenizer(CORPUS, vocab_size=384), seed=1, std=0.2)
    calls = []

    def distill(c, model_path, env, compressor="none"):
        calls.append((c.distill_steps, Path(model_path), env, compressor))
        target = load_model(model_path, "cpu")
        cfg = target.config
        info = DraftInfo(cfg.architecture, cfg.vocab_size, cfg.hidden_size, fingerprint(target))
        mode = None if compressor == "none" else CompressorConfig(mode=compressor)
        if mode is not None:
            info = DraftInfo(**{**info.__dict__, "compressor": mode.__dict__})
        with torch.no_grad():
            init_weights(DraftHead(target, mode), std=0.2, seed=2).save(tmp_path / compressor, info)
        return tmp_path / compressor

    monkeypatch.setattr(spec_vlm, "distill", distill)
    jobs = []  # the real distill(): the job it hands `reasonrl distill-draft`
    monkeypatch.setattr("reasonrl.engine.spec.distill.run_distill", lambda job, cfg: jobs.append((job, cfg)))
    from reasonrl.bench.spec import SpecBenchConfig, distill as real_distill

    real_distill(SpecBenchConfig(distill_steps=3), ckpt, "shapes:", "select")
    (job, cfg), = jobs
    assert (job.target, job.env, job.compressor, cfg.steps) == (str(ckpt), "shapes:", "select", 3)
    assert job.num_prompts == 3 * cfg.prompts_per_step  # the prompts its steps use, not 2048 images
    out = tmp_path / "vlm.json"
    env = "shapes:?image_size=112&families=text,detail"
    assert main(["bench", "spec", "--vlm", "--model", str(ckpt), "--distill-steps", "7", "--env", env,
                 "--num-prompts", "2", "--concurrency", "1", "--repeats", "1", "--max-tokens", "4",
                 "--json", str(out)]) == 0
    assert calls == [(7, ckpt, env, "none"), (7, ckpt, env, "select")]
    r = json.loads(out.read_text())
    assert r["greedy_identical"] is True
    assert r["eaglevlm"]["draft"] == str(tmp_path / "none") and r["specvlm"]["draft"] == str(tmp_path / "select")
    assert "text_only_rate_detail" in r["specvlm"] and "text_only_rate_detail" not in r["eaglevlm"]


def test_speedups_pair_the_arms_within_each_repeat_and_alternate_their_order():
    from reasonrl.bench.spec import arm_order, paired_ratio

    # the machine ran 2x faster in the second repeat: a ratio of medians (3 / 2.5) would read 1.2x
    assert paired_ratio([2.0, 4.0, 3.0], [1.0, 4.0, 2.0]) == 1.5
    arms = {"plain": 0, "speculative": 1}
    assert [n for n, _ in arm_order(arms, 0)] == ["plain", "speculative"]
    assert [n for n, _ in arm_order(arms, 1)] == ["speculative", "plain"]


def test_without_batch_one_the_figures_come_from_the_lowest_level(tmp_path):
    """They were gathered at batch 1 only: without it, accepted length and cost ratios read 0."""
    out = tmp_path / "spec.json"
    assert main(["bench", "spec", "--num-prompts", "3", "--max-tokens", "24", "--repeats", "1", "--concurrency", "2",
                 "--draft-depth", "4", "--no-adaptive", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["figures_at_concurrency"] == 2 and 1 < r["accepted_length"] <= 5 and r["verify_cost_ratio"] > 0


def test_greedy_identical_reads_every_repeat_and_every_level():
    """Only each arm's first repeat was compared: a second repeat's wrong tokens went unseen."""
    from reasonrl.bench.spec import greedy_identical

    plain1, plain8 = [[1, 2], [3]], [[1, 2], [3], [4], [5]]  # a level decodes its own, larger prompt set
    good = {"plain@1": [plain1, plain1], "speculative@1": [plain1, plain1], "plain@8": [plain8],
            "speculative@8": [plain8], "timed@1": [plain1]}
    assert greedy_identical(good, [1, 8])
    assert not greedy_identical({**good, "speculative@1": [plain1, [[1, 9], [3]]]}, [1, 8])  # a later repeat
    assert not greedy_identical({**good, "plain@8": [[[1, 2], [7], [4], [5]]], "speculative@8": [[[1, 2], [7], [4], [5]]]},
                                [1, 8])  # plain decoding itself disagrees across levels


def test_kept_tokens_are_those_that_reached_the_outputs():
    """The accepted length counts tokens a round accepted past a stop or max_tokens; the tokens that
    reached the outputs are counted apart (15% fewer on the demo's short answers)."""
    from reasonrl.bench.spec import DEMO, _prompts, SpecBenchConfig, decode
    from reasonrl.engine.config import EngineConfig
    from reasonrl.engine.llm_engine import LLMEngine
    from reasonrl.engine.spec.draft import DraftHead
    from reasonrl.models.loader import load_model

    target = load_model(DEMO / "policy", "cpu", None)
    prompts = _prompts(SpecBenchConfig(), DEMO / "policy", 6)
    engine = LLMEngine(target, None, EngineConfig(max_model_len=256, draft_adaptive=False),
                       draft=DraftHead.load(DEMO / "draft", target))
    run = decode(engine, prompts, 96, 1)  # the answers end at EOS, mostly inside a round
    stats = engine.stats()
    assert stats["spec_kept_tokens"] == sum(len(o) for o in run.outputs) - len(prompts)  # the first from the prefill
    assert stats["spec_kept_tokens"] < stats["spec_emitted_tokens"]
