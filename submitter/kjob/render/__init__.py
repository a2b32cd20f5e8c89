"""From a JobSpec to what a job runs: the command lines (commands), the Kubernetes objects
(manifests) and their text: YAML, JSON or a kustomize folder (text)."""
