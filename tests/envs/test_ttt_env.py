"""TTTEnvironment, the JSONL export and the benchmark report."""

import json

import pytest

from reasonrl.envs.base import Environment
from reasonrl.envs.ttt import TTTEnvironment, benchmark, export_jsonl
from reasonrl.envs.ttt.bench import TTTBenchConfig
from reasonrl.envs.ttt.games import get_game

PUBLISHED_KEYS = ["problem", "solution", "is_unique_solution", "verdict", "next_player",
                  "currect_board_visualization", "board_visualization", "problem_number"]


def test_prompts_are_chat_messages_with_answers():
    env = TTTEnvironment(games=("oTTT", "sTTT"))
    assert isinstance(env, Environment)
    prompts = env.prompts(6, seed=1)
    assert [p.metadata["game"] for p in prompts] == ["oTTT"] * 3 + ["sTTT"] * 3
    for p in prompts:
        system, user = p.messages
        assert system["role"] == "system" and "\\boxed{}" in system["content"]
        assert user["role"] == "user" and user["content"].endswith("play next?")
        assert p.answer and set(p.answer) <= set(get_game(p.metadata["game"]).labels)
    assert [p.id for p in prompts] == [p.id for p in env.prompts(6, seed=1)]
    assert len({p.id for p in prompts}) == 6


def test_train_and_eval_prompts_are_disjoint():
    env = TTTEnvironment(games=("cTTT",))
    train = {p.id for p in env.prompts(60, seed=0, split="train")}
    held = {p.id for p in env.prompts(20, seed=0, split="eval")}
    assert train and held and not train & held
    with pytest.raises(ValueError):
        env.prompts(1, split="test")
    with pytest.raises(ValueError):
        env.prompts(1, split="published")  # no files given


def test_score_reward_and_metrics():
    env = TTTEnvironment(games=("dTTT",))
    prompts = env.prompts(4, seed=2)
    right = [f"Reasoning... \\boxed{{{p.answer[0]}}}" for p in prompts]
    wrong_label = next(c for c in get_game("dTTT").labels if c not in prompts[0].answer)
    assert all(env.reward(p, r) == 1.0 for p, r in zip(prompts, right))
    assert env.reward(prompts[0], f"\\boxed{{{wrong_label}}}") == 0.0
    assert env.reward(prompts[0], None) == 0.0
    rewards = [1.0, 0.0, 1.0, 1.0]
    metrics = env.metrics(prompts, right, rewards)
    assert metrics["accuracy"] == 0.75 and metrics["accuracy/dTTT"] == 0.75
    for verdict in {p.metadata["verdict"] for p in prompts}:
        group = [r for p, r in zip(prompts, rewards) if p.metadata["verdict"] == verdict]
        assert metrics[f"accuracy/{verdict}"] == sum(group) / len(group)


def test_published_split_reads_the_files(tmp_path):
    record = {"problem": "Alice and Bob are playing a game on a 3x3 grid. Alice first places a white stone at E. "
                         "Bob places a black stone at A. Where should Alice play next?",
              "solution": "C, G", "problem_number": 7}
    (tmp_path / "ttt_puzzles_test.json").write_text(json.dumps([record]))
    env = TTTEnvironment(games=("oTTT",), published_dir=tmp_path)
    (prompt,) = env.prompts(split="published")
    assert prompt.answer == ["C", "G"] and prompt.id.endswith("/7")
    assert env.score(prompt, "\\boxed{G}") == 1.0


def test_score_reads_the_mover_from_the_question(tmp_path):
    """A move the response gives the other player is not its answer: the environment tells the
    verifier who is to move, from the problem's closing question."""
    env = TTTEnvironment(games=("oTTT",))
    for prompt in env.prompts(4, seed=3):
        mover = "Alice" if prompt.messages[-1]["content"].endswith("Alice play next?") else "Bob"
        other = "Bob" if mover == "Alice" else "Alice"
        wrong = next(c for c in get_game("oTTT").labels if c not in prompt.answer)
        assert env.score(prompt, f"{mover} plays at {prompt.answer[0]}, then {other} plays at {wrong}.") == 1.0
        assert env.score(prompt, f"{mover} plays at {wrong}, then {other} plays at {prompt.answer[0]}.") == 0.0
        assert env.extract(prompt, f"{other} should play at {prompt.answer[0]}.") is None
    record = {"problem": "Alice and Bob are playing a game on a 3x3 grid. Alice first places a white stone at E. "
                         "Bob places a black stone at A. Where should Alice play next?", "solution": "C, G"}
    (tmp_path / "ttt_puzzles_test.json").write_text(json.dumps([record]))
    (prompt,) = TTTEnvironment(games=("oTTT",), published_dir=tmp_path).prompts(split="published")
    assert env.score(prompt, "Alice plays at G, then Bob plays at D.") == 1.0


def test_export_jsonl_writes_the_schema(tmp_path):
    out = tmp_path / "sub" / "ottt.jsonl"
    assert export_jsonl("oTTT", 5, 0, out) == 5
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 5
    for row in rows:
        assert list(row)[:8] == PUBLISHED_KEYS
        assert {"game", "moves", "solution_list", "game_value", "optimal_moves"} <= set(row)
        assert row["solution"] == ", ".join(row["solution_list"])
    assert export_jsonl("oTTT", 10_000, 0, out) < 10_000  # the oTTT space is small


def test_benchmark_reports_space_and_throughput():
    report = benchmark(TTTBenchConfig(["oTTT"], n=20, judgements=200))
    entry = report["oTTT"]
    assert entry["space"]["method"] == "exact"
    assert entry["space"]["problems"] == sum(entry["space"]["by_class"].values())
    assert entry["generator"]["problems"] > 0 and entry["generator"]["per_second"] > 0
    assert entry["verifier"]["judgements"] == 200 and entry["verifier"]["per_second"] > 0


def test_registry_spec():
    from reasonrl.envs.ttt import from_spec

    assert from_spec("").games == from_spec("all").games == ("oTTT", "dTTT", "cTTT", "sTTT")
    env = from_spec("sTTT,oTTT?published=some/dir")
    assert env.games == ("sTTT", "oTTT") and str(env.published_dir) == "some/dir"
    with pytest.raises(ValueError):
        from_spec("oTTT?n=3")
    with pytest.raises(ValueError):
        from_spec("xTTT")
    with pytest.raises(ValueError, match=r"spec option \?published=DIR"):  # a CLI user has no constructor to call
        from_spec("oTTT").prompts(split="published")


def test_space_estimate_agrees_with_the_exact_count():
    from reasonrl.envs.ttt.bench import count_problems, estimate_problems

    exact = count_problems("cTTT")
    estimate = estimate_problems("cTTT", samples=6000, seed=0)
    assert abs(estimate["problems"] - exact["problems"]) < 4 * estimate["standard_error"] + 1


def test_a_stopped_export_leaves_the_earlier_file_as_it_was(tmp_path, monkeypatch):
    from reasonrl.envs.ttt import bench

    out = tmp_path / "good.jsonl"
    export_jsonl("oTTT", 5, 0, out)
    before, generate = out.read_bytes(), bench.generate

    def stop_after_two(game, n, seed):
        yield from generate(game, 2, seed)
        raise KeyboardInterrupt

    monkeypatch.setattr(bench, "generate", stop_after_two)
    with pytest.raises(KeyboardInterrupt, match="good.jsonl is as it was"):
        export_jsonl("oTTT", 100, 1, out)
    assert out.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["good.jsonl"]
