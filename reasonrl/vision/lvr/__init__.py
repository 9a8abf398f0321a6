"""Latent visual reasoning (LVR, arXiv 2509.24251): SFT sequences and loss here; the engine's latent mode is engine/latent.py."""
