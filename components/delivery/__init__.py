"""Cloud delivery: the served model version as Kubernetes manifests (components/delivery/manifests.py).
Plain functions with no Prefect or CLI import, so the CLI, the tests and a notebook all render the same YAML."""
