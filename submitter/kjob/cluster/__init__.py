"""The cluster backend: jobs on Kubernetes under the Kubeflow operators.

api (kubeconfig, sending, error translation) and requests (what is sent) carry every
call; jobs, pods, status, logs, stopping, fetch and exec_stream do one thing each;
backend puts them together for the CLI.
"""
