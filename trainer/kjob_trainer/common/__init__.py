"""The framework-free half of the trainer: flags and config, this rank's place in the job,
the dataset index, sharding, the lr schedule, the run protocol both loops follow,
checkpoints and metrics. Imports neither torch nor MindSpore, nor the rooms that do
(import-linter, pyproject.toml); both loops, `evaluate` and the launcher use it."""
