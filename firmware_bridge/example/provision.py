"""Write a device's provisioning image (layout: fw_provision.h): its id, its key from the fleet's
keys file, and its data set as uint8 pixels with one scale.

    python firmware_bridge/example/provision.py --device-id 3 --keys keys --data client3.npz --out device3.bin

--data is a client .npz of `fedtiny demo` / fedtiny.demo.write_client_data (x float32 in [0, 1],
8x8x1 per sample; y labels 0..9). Pixels are recovered exactly: x must be k / levels for an
integer k, with levels 16 (8x8 digits) or 255 (8-bit images). The firmware computes k * (1 /
levels) in float32: exact for 16, within one rounding of k / 255 for 255.
"""
from __future__ import annotations

import argparse
import struct
import sys
import zlib

import numpy as np

MAGIC = 0x31505446          # "FTP1"
HEADER_BYTES = 96
FEATURES = 64
MAX_SAMPLES = 1024          # FW_MAX_SAMPLES
KEY_BYTES = 64              # FT_WIRE_MAX_KEY_BYTES
LEVELS = (16, 255)


def pixels(x: np.ndarray) -> tuple[np.ndarray, int]:
    """(uint8 pixels, levels) such that pixels / levels reproduces x bit for bit in float32."""
    x = np.asarray(x, dtype=np.float32)
    for levels in LEVELS:
        q = np.rint(x.astype(np.float64) * levels)
        if q.min() >= 0 and q.max() <= 255 and np.array_equal(q.astype(np.float32) / np.float32(levels), x):
            return q.astype(np.uint8), levels
    raise ValueError("the data are not pixels k/16 or k/255 (k = 0..255): quantize them before provisioning")


def image(device_id: int, key: bytes, x: np.ndarray, y: np.ndarray) -> bytes:
    """The provisioning image of fw_provision.h."""
    x = np.asarray(x).reshape(len(y), -1)
    n = len(y)
    if x.shape[1] != FEATURES:
        raise ValueError(f"the example firmware takes {FEATURES} features per sample, the data have {x.shape[1]}")
    if not 1 <= n <= MAX_SAMPLES:
        raise ValueError(f"{n} samples: the example firmware holds 1 to {MAX_SAMPLES} (FW_MAX_SAMPLES)")
    if not 16 <= len(key) <= KEY_BYTES:
        raise ValueError(f"a device key has 16 to {KEY_BYTES} bytes, this one {len(key)}")
    labels = np.asarray(y, dtype=np.int64)
    if labels.min() < 0 or labels.max() > 9:
        raise ValueError("labels must be 0..9")
    q, levels = pixels(x)
    scale = np.float32(1.0) / np.float32(levels)
    body = q.tobytes() + b"\0" * (-q.size % 4)
    total = HEADER_BYTES + 4 * n + len(body) + 4
    head = struct.pack("<IIII64sIIfI", MAGIC, total, device_id, len(key), key, n, FEATURES, scale, 0)
    blob = head + labels.astype("<i4").tobytes() + body
    return blob + struct.pack("<I", zlib.crc32(blob))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device-id", type=int, required=True)
    p.add_argument("--keys", required=True, help="the fleet's keys file (fedtiny keys)")
    p.add_argument("--data", required=True, help="the device's .npz (x, y)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    from fedtiny.net import keys
    try:
        key = keys.load_keys(args.keys).get(args.device_id)
        if key is None:
            raise ValueError(f"{args.keys} has no key for device {args.device_id}: add it with fedtiny keys")
        with np.load(args.data) as z:
            blob = image(args.device_id, key, z["x"], z["y"])
    except (OSError, ValueError, KeyError) as exc:
        print(f"provision: {exc}", file=sys.stderr)
        return 2
    with open(args.out, "wb") as f:
        f.write(blob)
    return 0


if __name__ == "__main__":
    sys.exit(main())
