"""Library pipelines: whole measurements that return report dataclasses (the CLI prints them)."""
