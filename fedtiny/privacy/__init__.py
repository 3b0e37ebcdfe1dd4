"""Privacy stages of the update pipeline: secure aggregation and differential privacy (DESIGN.md).

Differential privacy, one idea per module: accounting (epsilon from dp-accounting), clipping
(fixed and adaptive L2 bounds), central (Gaussian noise on the sum, trusted aggregator),
ddgauss (distributed discrete Gaussian for secure aggregation), randomness (where noise bytes
come from), plan (the `fedtiny privacy` command).
"""
