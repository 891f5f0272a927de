"""Training and evaluation engine: optimisers and schedules, the loop, run directories, resume."""
