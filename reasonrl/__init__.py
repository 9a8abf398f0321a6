"""reasonrl: RL post-training of reasoning models with a fast, controllable rollout engine."""

__version__ = "0.1.0"
