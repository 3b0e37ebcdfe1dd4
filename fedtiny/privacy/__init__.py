"""Privacy stages of the update pipeline: secure aggregation and differential privacy (DESIGN.md)."""
