"""Speculative decoding: an EAGLE-2-style draft head (draft.py), dynamic draft trees (tree.py),
lossless verification (verify.py), the engine-side driver (speculator.py) and online-logit
distillation of the draft (distill.py)."""
