"""Paper-reproduction entries (one module per result); see experiments/README.md."""
