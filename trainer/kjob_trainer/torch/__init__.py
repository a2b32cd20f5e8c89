"""The PyTorch trainer: the loop, its plumbing (device, process group, optimizer), the
checkpoint dict, evaluation, input (torchvision decode, DALI) and the models.

Absolute imports only (`import torch` here is PyTorch itself, never this package). Never
imports `kjob_trainer.mindspore` nor MindSpore (import-linter, pyproject.toml)."""
