"""Prompt and greedy answer lengths of the held-out prompts `reasonrl bench spec` decodes (seed 1, 128),

for a VLM on shapes-world image prompts and a text target on `sums`: what bounds a batch-1 speedup
(docs/benchmarks.md, "Fixed small trees against the adaptive policy"). A measurement probe.

    OMP_NUM_THREADS=1 python recipes/cpu/spec_lengths.py VLM_DIR TEXT_DIR
"""

import sys, torch
from reasonrl.bench.spec import decode
from reasonrl.engine.config import EngineConfig
from reasonrl.engine.llm_engine import LLMEngine
from reasonrl.envs.registry import load_environment
from reasonrl.models.loader import load_model
from reasonrl.models.qwen2_5_vl.prompt import build_prompt
from reasonrl.models.tokenizer import Tokenizer
torch.set_num_threads(1)
vlm, text = sys.argv[1], sys.argv[2]
m, tok = load_model(vlm, "cpu"), Tokenizer.from_dir(vlm)
vp = [build_prompt(tok, p.messages, m.vlm_config, m.image_config)
      for p in load_environment("shapes:?image_size=224&max_objects=4").prompts(n=128, seed=1, split="eval")]
out = decode(LLMEngine(m, None, EngineConfig(max_model_len=max(len(p.input_ids) for p in vp) + 97)), vp, 96, 8)
print(f"VLM: prompt {sum(len(p.input_ids) for p in vp) / len(vp):.0f} tokens, answer {out.tokens / len(vp):.1f}")
t, ttok = load_model(text, "cpu"), Tokenizer.from_dir(text)
tp = [ttok.apply_chat_template(p.messages, add_generation_prompt=True) for p in load_environment("sums:").prompts(n=128, seed=1, split="eval")]
out = decode(LLMEngine(t, None, EngineConfig(max_model_len=max(map(len, tp)) + 97)), tp, 96, 8)
print(f"text: prompt {sum(map(len, tp)) / len(tp):.0f} tokens, answer {out.tokens / len(tp):.1f}")
