"""kjob_trainer: the training program that runs inside kjob jobs (PyTorch or MindSpore, under mpirun)."""
