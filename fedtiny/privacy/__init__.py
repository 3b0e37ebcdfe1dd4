"""Privacy stages of the update pipeline: secure aggregation and differential privacy (DESIGN.md).

Secure aggregation: grid (one integer grid per round, sums modulo 2^b), secagg (SecAgg+),
shamir, inprocess (the whole protocol in one process). Differential privacy, one idea per
module: accounting (epsilon from dp-accounting), clipping (fixed and adaptive L2 bounds),
central (Gaussian noise on the sum, trusted aggregator), ddgauss (distributed discrete Gaussian
for secure aggregation), randomness (where noise bytes come from), pipeline (one run's DP state
for the round loop), plan (the `fedtiny privacy` command).
"""
