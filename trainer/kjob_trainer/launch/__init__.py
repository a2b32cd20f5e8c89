"""The MPIJob pods' PID 1 (`python -m kjob_trainer.launch`): pid1.py relays stop signals to
mpirun, holds a worker's sshd until its ranks have saved and reaps orphans; ssh_hosts.py
waits for the hostfile's workers and hands every rank the rendezvous host.

Standard library and `kjob_trainer.common` only: it runs in both images and imports no
framework (import-linter, pyproject.toml)."""
