"""The local backend: a job's own mpirun on this machine. backend (submit, status, logs,
delete, fetch-ckpt), waiter (the process that outlives kjob and records the exit),
runrecord (run.json), procs (the processes of a run, and stopping them)."""
