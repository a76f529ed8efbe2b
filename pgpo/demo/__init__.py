"""The embedded default: a small real VLM learning procedural visual tasks with GRPO vs PGPO on a CPU."""
