"""`fedtiny export`: write a trained model (a --params vector or the aggregator's --state) as .tflite."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ..model import build
from .runtime import export_tflite, load_params, load_samples

HELP = "write a trained model as a TFLite flatbuffer (float32 or full-integer int8)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of `fedtiny export`."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--params", metavar="FILE", help="flat float32 parameter vector (.npy)")
    src.add_argument("--state", metavar="DIR", help="aggregator state directory (its last finished round)")
    p.add_argument("--model", required=True, metavar="SPEC",
                   help='model spec: "cnn", "2nn", "mlp:784-200-10", "seq:...", or a float FILE.tflite')
    p.add_argument("--tflite", required=True, metavar="OUT", help="output .tflite file")
    p.add_argument("--int8", action="store_true", help="full-integer int8 model (needs --calibration-data)")
    p.add_argument("--calibration-data", metavar="FILE",
                   help="input samples for int8 calibration: .npy, .npz with an 'x' array "
                        "(uint8 pixels are scaled to [0, 1]), or a fedtiny dataset name")
    p.add_argument("--calibration-size", type=int, default=1000, metavar="N",
                   help="use the first N calibration samples (default 1000)")
    p.add_argument("--softmax", action="store_true", help="append a softmax (probabilities out)")
    p.add_argument("--drop-dense", type=int, default=0, metavar="K",
                   help="export without the last K dense layers: a feature extractor for --backbone")


def run_command(args: argparse.Namespace) -> int:
    """Run `fedtiny export`; bad input raises ValueError naming the problem."""
    if args.int8 and not args.calibration_data:
        raise ValueError("--int8 needs --calibration-data FILE")
    if args.calibration_data and not args.int8:
        raise ValueError("--calibration-data is only used with --int8")
    if args.calibration_size < 1:
        raise ValueError(f"--calibration-size must be >= 1, got {args.calibration_size}")
    model = build(args.model)
    params = load_params(args.params, args.state)
    calib = load_samples(args.calibration_data, args.calibration_size) if args.int8 else None
    try:
        # a model imported from a .tflite that ended in SOFTMAX gets it back
        softmax = args.softmax or bool(model.imported and model.imported.softmax)
        content = export_tflite(model, params, args.tflite, int8=args.int8, calibration=calib,
                                softmax=softmax, drop_dense=args.drop_dense)
    except ImportError as exc:  # no interpreter for int8 calibration, or no schema package
        raise ValueError(str(exc)) from None
    kind = "int8" if args.int8 else "float32"
    print(f"wrote {args.tflite}: {kind} TFLite model of {args.model}, {len(content)} bytes")
    return 0


def main_export(argv: Sequence[str] | None = None) -> int:
    """`fedtiny export` on its own (argv without the program name); errors as fedtiny.cli does."""
    p = argparse.ArgumentParser(prog="fedtiny export", description=HELP)
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        return run_command(args)
    except ValueError as exc:
        print(f"fedtiny export: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"fedtiny export: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2
