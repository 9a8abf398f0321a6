"""Latent visual reasoning (LVR, arXiv 2509.24251). The engine's latent mode is engine/latent.py; here:
sft.py (sequences, loss), data.py and train.py (shapes-world examples, the SFT arms), replay.py (GRPO's
replay), env.py (the `lvr` environment's rewards), evaluate.py and experiment.py (the measurements),
export.py (`reasonrl data lvr`)."""
