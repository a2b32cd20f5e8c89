"""The job spec: its models (model), reading spec files (load), the Kubernetes-format
checks of its values (checks) and YAML with line numbers (yamlfile)."""
