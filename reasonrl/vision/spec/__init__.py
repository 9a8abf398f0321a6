"""SpecVLM's elastic visual compressor for the draft head (compressor.py)."""
