"""The SAND recipe: one YAML, one dataclass per stage, every error naming its key, files checked at load."""

import json

import pytest
import yaml

from reasonrl.config import ConfigError
from reasonrl.data.sand import from_dict, load_recipe
from reasonrl.data.sand.recipe import free_keys
from reasonrl.data.sand.sections import AIME_BRANCHES

TOPICS = {"Number Theory": {"Modular arithmetic": {"theorems": ["Fermat's little theorem"],
                                                   "tools_concepts": ["orders"]}}}


@pytest.fixture
def files(tmp_path):
    topics = tmp_path / "topics.yaml"
    topics.write_text(yaml.safe_dump(TOPICS))
    evals = tmp_path / "aime.jsonl"
    evals.write_text(json.dumps({"problem": "Find the number of positive divisors of 2024."}) + "\n")
    return {"topics": str(topics), "evals": str(evals)}


def recipe(files, **sections):
    data = {"defaults": {"base_url": "http://127.0.0.1:9/v1", "model": "teacher"},
            "hike": {"topics": files["topics"]}, "decontaminate": {"eval_sets": [files["evals"]]}}
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return data


def test_defaults_fill_every_model_calling_stage_and_a_stage_wins(files):
    r = from_dict(recipe(files, defaults={"concurrency": 64, "base_url": "http://big:8000/v1", "model": "big"},
                         consistency={"base_url": "http://small:8001/v1", "model": "judge"}))
    assert (r.generate.base_url, r.solve.model, r.rate.concurrency) == ("http://big:8000/v1", "big", 64)
    assert (r.consistency.base_url, r.consistency.model, r.consistency.concurrency) == ("http://small:8001/v1", "judge", 64)
    # stage defaults of the paper stay unless set
    assert (r.generate.temperature, r.consistency.temperature, r.rate.temperature, r.rate.ratings) == (1.0, 0.0, 0.5, 3)
    assert r.generate.branches == AIME_BRANCHES and r.solve.n == 2


@pytest.mark.parametrize("change, message", [
    ({"rate": {"ratings": "three"}}, "rate.ratings: expected int, got 'three'"),
    ({"solve": {"nn": 2}}, "solve.nn: unknown key"),
    ({"generat": {}}, "generat: unknown section"),
    ({"generate": {"temperature": -1.0}}, "generate: temperature: must be >= 0, got -1.0"),
    ({"generate": {"template": "easy"}}, "generate.template: expected one of aime"),
    ({"generate": {"instructions": "Write a problem."}}, "generate.instructions: must contain {branch}"),
    ({"dedupe": {"num_perm": 100, "bands": 32}}, "dedupe: num_perm: 100 is not a multiple of bands"),
    ({"consistency": {"min_agreeing": 3}}, "consistency.min_agreeing: 3 is more than solve.n (2)"),
    ({"decontaminate": {"embed_base_url": "http://e/v1"}}, "decontaminate: embed_model: embed_base_url and embed_model go together"),
    ({"measure": {"min_difficulty": 0.2}}, "measure.model: required to filter"),
    ({"measure": {"model": "/no/such/ckpt"}}, "measure.model: checkpoint directory /no/such/ckpt does not exist"),
    ({"hike": {"topics": "/no/topics.yaml"}}, "topic file /no/topics.yaml does not exist"),
    ({"decontaminate": {"eval_sets": ["/no/aime.jsonl"]}}, "evaluation set /no/aime.jsonl does not exist"),
    ({"generate": {"problems": 0}}, "generate.problems: 0 with no generate.seed_problems"),
    # windows that drop every problem, after every call was paid for
    ({"rate": {"min_rating": 8, "max_rating": 3}}, "rate: min_rating: 8.0 is above max_rating 3.0"),
    ({"rate": {"min_rating": 11}}, "rate: min_rating: must be a rating in"),
    ({"measure": {"min_difficulty": 1.5}}, "measure: min_difficulty: must be a difficulty in"),
    ({"measure": {"top_p": 0}}, "measure: top_p: must be in"),
    ({"consistency": {"tail_chars": 0}}, "consistency: tail_chars: must be >= 1"),
])
def test_bad_recipes_fail_at_load_naming_the_key(files, change, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("{", r"\{")):
        from_dict(recipe(files, **change))


def test_a_stage_that_calls_a_model_needs_an_endpoint(files, tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(json.dumps({"problem": "1+1?", "answer": 2}) + "\n")
    data = recipe(files)
    del data["defaults"]
    data["generate"] = {"problems": 0, "seed_problems": str(seeds)}
    with pytest.raises(ConfigError, match=r"solve.base_url: required \(this stage calls a model\)"):
        from_dict(data)
    # without hiking, a judge or embeddings, only solve and rate need one
    data.update(solve={"base_url": "http://s/v1", "model": "m"}, rate={"base_url": "http://s/v1", "model": "m"},
                hike={"enabled": False}, consistency={"judge": False})
    r = from_dict(data)
    assert r.generate.base_url is None and r.hike.base_url is None


def test_files_are_read_at_load_with_file_and_line(files, tmp_path):
    bad_topics = tmp_path / "bad.yaml"
    bad_topics.write_text(yaml.safe_dump({"Algebra": {"Inequalities": {"theorems": "AM-GM"}}}))
    with pytest.raises(ConfigError, match=r"bad.yaml: Algebra.Inequalities.theorems: expected a list of names"):
        from_dict(recipe(files, hike={"topics": str(bad_topics)}))
    evals = tmp_path / "evals.jsonl"
    evals.write_text(json.dumps({"problem": "x"}) + "\n" + json.dumps({"text": "y"}) + "\n")
    with pytest.raises(ConfigError, match=r"evals.jsonl:2: no problem text"):
        from_dict(recipe(files, decontaminate={"eval_sets": [str(evals)]}))
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(json.dumps({"problem": "2+2?"}) + "\n")
    with pytest.raises(ConfigError, match=r"seeds.jsonl:1: needs an \"answer\" or a \"solution\""):
        from_dict(recipe(files, generate={"seed_problems": str(seeds)}))


def test_files_not_in_utf8_are_refused_naming_the_file_and_line(files, tmp_path):
    """A Latin-1 file failed with "'utf-8' codec can't decode byte 0xe9 ...", naming no file."""
    evals = tmp_path / "evals.jsonl"
    evals.write_bytes(b'{"problem": "1+1"}\n{"problem": "Caf\xe9: 1+1"}\n')
    with pytest.raises(ConfigError, match=r"evals.jsonl:2: not UTF-8"):
        from_dict(recipe(files, decontaminate={"eval_sets": [str(evals)]}))
    topics = tmp_path / "topics.yaml"
    topics.write_bytes(b"Algebra:\n  Inequalities:\n    theorems: [Caf\xe9]\n")
    with pytest.raises(ConfigError, match=r"topics.yaml:3: not UTF-8"):
        from_dict(recipe(files, hike={"topics": str(topics)}))


def test_seed_answers_that_are_numbers_are_written_positionally(tmp_path):
    """str(1e-07) is '1e-07', which a math parser reads as Euler's e minus 7: correct solutions
    scored 0 and \\boxed{e-7} scored 1."""
    from reasonrl.data.sand.source import load_seed_problems

    seeds = tmp_path / "seeds.jsonl"
    answers = (1e-07, 1e20, -2.5e-05, 0.5, 12, "1e-07")
    seeds.write_text("".join(json.dumps({"problem": "?", "answer": a}) + "\n" for a in answers))
    assert [p.answer for p in load_seed_problems(seeds)] == [
        "0.0000001", "100000000000000000000", "-0.000025", "0.5", "12", "1e-07"]  # a string is the author's
    seeds.write_text('{"problem": "?", "answer": NaN}\n')
    with pytest.raises(ValueError, match=r"seeds.jsonl:1: \"answer\" must be a finite number"):
        load_seed_problems(seeds)


def test_seed_and_eval_lines_may_hold_line_separators_inside_their_strings(tmp_path):
    """splitlines() cut a line at U+2028 or U+0085 inside a JSON string (SAND's own problems.jsonl
    writes them raw): a valid file was refused as "not valid JSON"."""
    from reasonrl.data.sand.decontam import load_eval_sets
    from reasonrl.data.sand.source import load_seed_problems

    rows = [{"problem": "Find x.\u2028Given x+1=3.", "answer": "2"}, {"problem": "Compute 1+1\x85 now", "answer": 2}]
    path = tmp_path / "problems.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    assert [p.problem for p in load_seed_problems(path)] == [r["problem"] for r in rows]
    assert sorted(e.text for e in load_eval_sets([str(path)])) == sorted(r["problem"] for r in rows)


def test_yaml_file_with_overrides_and_a_saved_resolved_recipe_reloads_equal(files, tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe(files, solve={"n": 4})))
    r = load_recipe(path, {"generate.problems": 7, "rate.ratings": 5})
    assert (r.generate.problems, r.rate.ratings, r.solve.n) == (7, 5, 4)
    again = from_dict(r.to_dict())  # what the run directory saves is itself a recipe
    assert again == r
    with pytest.raises(ConfigError, match="override 'generate' must look like section.key=value"):
        load_recipe(path, {"generate": 3})


def test_free_keys_are_the_ones_that_do_not_change_an_answer():
    keys = free_keys()
    assert {"generate.base_url", "solve.concurrency", "defaults.retries", "measure.base_url"} <= keys
    assert not {"generate.temperature", "solve.n", "rate.ratings", "generate.model", "run.seed"} & keys


def test_the_shipped_recipes_load(tmp_path):
    from reasonrl.rl.config import read_yaml
    from sand_helpers import REPO

    data = read_yaml(REPO / "recipes" / "sand-math.yaml")
    evals = tmp_path / "e.jsonl"
    evals.write_text(json.dumps({"problem": "x"}) + "\n")
    data["decontaminate"]["eval_sets"] = [str(evals)] * 4  # the real ones are the user's to download
    data["hike"]["topics"] = str(REPO / data["hike"]["topics"])
    r = from_dict(data)
    assert (r.consistency.model, r.rate.model, r.generate.model) == ("meta-llama/Llama-3.3-70B-Instruct",) * 2 + (
        "openai/gpt-oss-120b",)
    assert r.generate.extra_body == {"reasoning_effort": "high"} and r.rate.extra_body == {}
    sums = read_yaml(REPO / "recipes" / "sand-sums.yaml")
    sums["decontaminate"]["eval_sets"] = [str(evals)]
    sums["hike"]["topics"] = str(REPO / sums["hike"]["topics"])
    sums["measure"]["model"] = str(REPO / sums["measure"]["model"])
    assert from_dict(sums).solve.system_prompt is None


def test_the_recipe_printed_in_docs_is_the_shipped_one():
    import re

    from reasonrl.rl.config import read_yaml
    from sand_helpers import REPO

    block = re.search(r"```yaml\n(.*?)```", (REPO / "docs" / "sand.md").read_text(), re.S).group(1)
    assert yaml.safe_load(block) == read_yaml(REPO / "recipes" / "sand-math.yaml")


def test_generate_problems_has_an_upper_bound_and_building_the_slots_stops_when_asked():
    from types import SimpleNamespace

    from reasonrl.data.sand.calls import Stopped
    from reasonrl.data.sand.sections import MAX_PROBLEMS, GenerateSection
    from reasonrl.data.sand.source import slots

    with pytest.raises(ValueError, match=r"problems: must be >= 0 and <= 1,000,000"):
        GenerateSection(problems=MAX_PROBLEMS + 1)
    recipe = SimpleNamespace(generate=GenerateSection(problems=20_001), run=SimpleNamespace(seed=0))
    asked = []
    with pytest.raises(Stopped, match="base.generate"):
        slots(recipe, lambda: asked.append(1) or len(asked) > 1)  # true on the second look
    assert len(asked) == 2
