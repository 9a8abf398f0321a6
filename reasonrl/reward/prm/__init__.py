"""Process reward models (Athena-PRM): steps, labels, model, training, scoring and their uses; see docs/prm.md."""
