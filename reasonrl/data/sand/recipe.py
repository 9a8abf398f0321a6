"""A SAND-Math run is one YAML recipe mapped onto the section dataclasses of sections.py.

    run:           {seed: 0}
    defaults:      {base_url: http://gpu-node:8000/v1, model: openai/gpt-oss-120b, concurrency: 64}
    generate:      {problems: 1000, temperature: 1.0, max_tokens: 32768}
    solve:         {n: 2}
    consistency:   {base_url: http://judge:8001/v1, model: meta-llama/Llama-3.3-70B-Instruct}
    dedupe:        {threshold: 0.8}
    decontaminate: {eval_sets: [data/aime25.jsonl, data/math500.jsonl]}
    rate:          {ratings: 3}
    measure:       {model: runs/policy, k: 8}
    hike:          {topics: recipes/sand-topics.yaml}
    export:        {min_solution_words: 500}

`defaults` holds endpoint keys shared by every model-calling stage; a stage's own keys win.
Unknown sections and keys, wrong types, inconsistent values, a missing endpoint for a stage that
will call one, and unreadable files (topics, evaluation sets, seed problems) fail at load, naming
the key (`rate.ratings: expected int, got 'three'`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reasonrl.config import ConfigError, build, to_dict
from reasonrl.rl.config import read_yaml

from .sections import (ConsistencySection, DecontamSection, DedupeSection, ExportSection, GenerateSection,
                       HikeSection, LLMSection, MeasureSection, RateSection, RunSection, SolveSection, llm_sections,
                       section_types)

# keys that do not change what a call returns: a rerun may change them freely (a restarted server
# may listen elsewhere; concurrency and retries only change how fast)
FREE_LLM_KEYS = ("base_url", "api_key_env", "concurrency", "retries", "backoff", "timeout")


@dataclass
class Recipe:
    run: RunSection = field(default_factory=RunSection)
    defaults: LLMSection = field(default_factory=LLMSection)
    generate: GenerateSection = field(default_factory=GenerateSection)
    solve: SolveSection = field(default_factory=SolveSection)
    consistency: ConsistencySection = field(default_factory=ConsistencySection)
    dedupe: DedupeSection = field(default_factory=DedupeSection)
    decontaminate: DecontamSection = field(default_factory=DecontamSection)
    rate: RateSection = field(default_factory=RateSection)
    measure: MeasureSection = field(default_factory=MeasureSection)
    hike: HikeSection = field(default_factory=HikeSection)
    export: ExportSection = field(default_factory=ExportSection)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def load_recipe(path: str | Path, overrides: dict[str, Any] | None = None) -> Recipe:
    """The recipe at `path`, with `{"section.key": value}` overrides applied (`--set` on the command line)."""
    data = read_yaml(path)
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        if not key:
            raise ConfigError(f"override {dotted!r} must look like section.key=value")
        if not isinstance(data.setdefault(section, {}), dict):
            raise ConfigError(f"{section}: must be a mapping")
        data[section][key] = value
    return from_dict(data)


def from_dict(data: dict[str, Any]) -> Recipe:
    known = section_types()
    for name, value in data.items():
        if name not in known:
            raise ConfigError(f"{name}: unknown section; known: {', '.join(known)}")
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: must be a mapping of keys, got {type(value).__name__}")
    shared = data.get("defaults", {})
    sections = {}
    for name, cls in known.items():
        given = dict(data.get(name, {}))
        if name in llm_sections():
            given = {**shared, **given}
        sections[name] = build(cls, given, name)
    recipe = Recipe(**sections)
    check(recipe)
    return recipe


def check(recipe: Recipe) -> None:
    """Rules that span keys, and the files the recipe names."""
    for name, section in active_llm_sections(recipe).items():
        for key in ("base_url", "model"):
            if not getattr(section, key):
                raise ConfigError(f"{name}.{key}: required (this stage calls a model); set it in {name} or in defaults")
    gen = recipe.generate
    if gen.problems == 0 and not gen.seed_problems:
        raise ConfigError("generate.problems: 0 with no generate.seed_problems leaves nothing to work on")
    if gen.instructions is not None and "{branch}" not in gen.instructions:
        raise ConfigError("generate.instructions: must contain {branch} (and may contain {mix}), where the "
                          "candidate's branches go")
    if recipe.solve.n < (recipe.consistency.min_agreeing or 1):
        raise ConfigError(f"consistency.min_agreeing: {recipe.consistency.min_agreeing} is more than solve.n "
                          f"({recipe.solve.n})")
    if recipe.measure.model is None and (recipe.measure.min_difficulty is not None
                                         or recipe.measure.max_difficulty is not None):
        raise ConfigError("measure.model: required to filter on empirical difficulty")
    check_files(recipe)


def active_llm_sections(recipe: Recipe) -> dict[str, LLMSection]:
    """The model-calling stages this recipe will run."""
    active = {"solve": recipe.solve, "rate": recipe.rate}
    if recipe.generate.problems:
        active["generate"] = recipe.generate
    if recipe.consistency.judge:
        active["consistency"] = recipe.consistency
    if recipe.decontaminate.embed_base_url:
        active["decontaminate"] = recipe.decontaminate
    if recipe.hike.enabled:
        active["hike"] = recipe.hike
    return active


def check_files(recipe: Recipe) -> None:
    from .decontam import load_eval_sets
    from .source import load_seed_problems
    from .topics import load_topics

    try:
        if recipe.hike.enabled:
            if not recipe.hike.topics:
                raise ConfigError("hike.topics: required when hike.enabled (a YAML topic file)")
            load_topics(recipe.hike.topics)
        if recipe.generate.seed_problems:
            load_seed_problems(recipe.generate.seed_problems)
        load_eval_sets(recipe.decontaminate.eval_sets, recipe.decontaminate.eval_field)
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    if recipe.measure.model and recipe.measure.base_url is None and not Path(recipe.measure.model).is_dir():
        raise ConfigError(f"measure.model: checkpoint directory {recipe.measure.model} does not exist (set "
                          "measure.base_url to measure a model behind an endpoint)")


def free_keys() -> set[str]:
    """Recipe keys a rerun into the same directory may change."""
    keys = {f"{name}.{key}" for name in [*llm_sections(), "defaults"] for key in FREE_LLM_KEYS}
    keys |= {"decontaminate.embed_base_url", "decontaminate.embed_api_key_env", "measure.base_url",
             "measure.api_key_env", "measure.concurrency", "measure.device", "run.progress",
             "consistency.verifier_workers"}
    return keys


__all__ = ["ConsistencySection", "DecontamSection", "DedupeSection", "ExportSection", "GenerateSection",
           "HikeSection", "LLMSection", "MeasureSection", "RateSection", "Recipe", "RunSection", "SolveSection",
           "free_keys", "from_dict", "load_recipe"]
