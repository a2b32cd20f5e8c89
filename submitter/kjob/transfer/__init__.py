"""Moving checkpoints out of a run, verified, for both backends: the trainer's index
(index), safe streaming tar extraction and verified copies (tarsafe), and the progress
line (progress)."""
