"""Run machinery that knows nothing of models: run directories, checkpoints, resume rules, RNG and
signals, sampling, progress, device choice."""
