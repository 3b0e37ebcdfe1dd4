"""`fedtiny privacy`: the privacy plan of a run before it starts: z, epsilon by round, noise per coordinate."""
from __future__ import annotations

import argparse

from .. import rounds
from . import accounting, ddgauss

HELP = "print the differential-privacy plan of a run: noise multiplier, epsilon after T rounds, noise per coordinate"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dp", default="central", choices=("central", "distributed"))
    p.add_argument("--clients", type=int, default=1000, help="devices in the federation (default %(default)s)")
    p.add_argument("--fraction", type=float, default=0.1, help="expected share of devices per round (default %(default)s)")
    p.add_argument("--rounds", type=int, default=100, help="T (default %(default)s)")
    p.add_argument("--clip-norm", type=float, default=1.0, metavar="C", help="L2 bound per update (default %(default)s)")
    z = p.add_mutually_exclusive_group(required=True)
    z.add_argument("--noise-multiplier", type=float, metavar="Z")
    z.add_argument("--target-epsilon", type=float, metavar="E", help="calibrate Z for epsilon E after --rounds")
    p.add_argument("--delta", type=float, default=1e-5, help="(default %(default)s)")
    p.add_argument("--dp-sampling", default="poisson", choices=accounting.SAMPLINGS, help="(default %(default)s)")
    p.add_argument("--params", type=int, default=None, metavar="D",
                   help="model parameters (distributed; default: those of --model)")
    p.add_argument("--model", default="2nn", help="model whose parameter count to use (default %(default)s)")
    p.add_argument("--dp-bits", type=int, default=None, help="distributed: modulus 2^b (default: chosen)")


def run_command(args: argparse.Namespace) -> int:
    if args.clients < 1 or args.rounds < 1:
        raise ValueError("--clients and --rounds must be >= 1")
    m = rounds.n_sampled(args.clients, args.fraction)
    s = accounting.Sampling(args.dp_sampling, args.clients, m)
    z = (args.noise_multiplier if args.noise_multiplier is not None
         else accounting.calibrate(s, args.target_epsilon, args.rounds, args.delta))
    print(f"{args.dp} DP, {s.kind} sampling: {m} of {args.clients} devices per round (q = {s.q:g}), "
          f"clip C = {args.clip_norm:g}, delta = {args.delta:g}")
    print(f"noise multiplier z = {z:.4f}: noise std on the sum {z * args.clip_norm:.4g}, "
          f"per coordinate of the mean {z * args.clip_norm / m:.4g}")
    if args.dp == "distributed":
        d = args.params
        if d is None:
            from .. import model
            d = model.build(args.model).n_params
        from .pipeline import cohort_range
        n_min, n_max = cohort_range(s.kind, args.clients, m)
        p = ddgauss.choose(d, args.clip_norm, z, n_min, args.dp_bits, max_devices=n_max)
        print(f"grid: {d} parameters padded to {p.padded}, modulus 2^{p.bits} ({ddgauss.bytes_per_value(p)} bytes per value), "
              f"step gamma = {p.gamma:.4g}, rounded sensitivity {p.delta2:.1f} grid units")
        print(f"each device adds N_Z(0, {p.sigma2:.6g}) per coordinate; rounds of {p.devices} to {p.max_devices} devices "
              f"are released (others abandoned); with {p.devices} the sum's noise multiplier is "
              f"{p.z_effective:.4f} ({p.sum_noise_std() / (z * args.clip_norm) - 1:+.1%} noise and rounding against central); "
              f"with the expected {m}: noise and rounding per coordinate of the mean {p.sum_noise_std(m) / m:.4g}")
    marks = sorted({r for r in (1, 10, 50, 100, 200, 500, 1000) if r < args.rounds} | {args.rounds})
    print("epsilon after round " + ", ".join(f"{r}: {accounting.epsilon(s, z, r, args.delta):.3f}" for r in marks))
    return 0
