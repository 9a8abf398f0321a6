"""ImageDoctor (arXiv 2510.01010): a Qwen2.5-VL image judge with flaw heatmaps; see docs/vision.md."""
