"""The MindSpore trainer: the loop, its plumbing (device, graph mode, MindCV's network and
train step), evaluation, input pipelines and the dynamic-cluster bootstrap.

Absolute imports only (`import mindspore` here is MindSpore itself, never this package).
Never imports `kjob_trainer.torch` nor PyTorch (import-linter, pyproject.toml)."""
