"""Per-device pre-shared keys: a text file, one `device_id hexkey` per line.

    # comments and blank lines are ignored
    0 000102030405060708090a0b0c0d0e0f
    1 8f1c...                            (16 to 64 bytes: 32 to 128 hex digits)

The aggregator loads every device's key; a device's own file may hold only its line. The file
holds secrets: the aggregator and the client refuse one that its group or others may read or
write (the error says which chmod to run). `fedtiny keys` writes them: created with mode 0600
and O_EXCL from the first byte (never chmod-ed afterwards, never overwritten).
"""
from __future__ import annotations

import argparse
import os
import stat


MIN_KEY_BYTES = 16   # docs/PROTOCOL.md: FT_WIRE_MIN_KEY_BYTES
MAX_KEY_BYTES = 64   # FT_WIRE_MAX_KEY_BYTES
MAX_DEVICE_ID = 2**32 - 1


def parse_keys(text: str, source: str = "keys") -> dict[int, bytes]:
    keys: dict[int, bytes] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{source} line {lineno}"
        fields = line.split()
        if len(fields) != 2:
            raise ValueError(f"{where}: expected 'device_id hexkey', got {len(fields)} field(s)")
        device, hexkey = fields
        try:
            device_id = int(device, 10)
        except ValueError:
            raise ValueError(f"{where}: device id {device!r} is not a decimal integer") from None
        if not 0 <= device_id <= MAX_DEVICE_ID:
            raise ValueError(f"{where}: device id {device_id} outside 0 .. {MAX_DEVICE_ID}")
        try:
            key = bytes.fromhex(hexkey)
        except ValueError:
            raise ValueError(f"{where}: key is not hexadecimal") from None
        if not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
            raise ValueError(f"{where}: key of {len(key)} bytes, expected {MIN_KEY_BYTES} to {MAX_KEY_BYTES}")
        if device_id in keys:
            raise ValueError(f"{where}: device {device_id} already has a key")
        keys[device_id] = key
    return keys


def load_keys(path: str) -> dict[int, bytes]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
            mode = os.fstat(f.fileno()).st_mode   # of the file read, not of whatever the path names later
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"keys file {path}: {exc}") from None
    keys = parse_keys(text, path)
    if not keys:
        raise ValueError(f"keys file {path} holds no keys")
    check_private(path, mode)
    return keys


def check_private(path: str, mode: int) -> None:
    """A keys file open to its group or to others is refused with the chmod that fixes it."""
    if os.name == "posix" and stat.S_IMODE(mode) & 0o077:
        raise ValueError(f"keys file {path} holds secrets but has mode {stat.S_IMODE(mode):04o} (open to group or "
                         f"others): run chmod 600 {path}")


def write_keys(path: str, text: str) -> None:
    """Create a keys file readable by its owner only: mode 0600 from creation (O_EXCL: an existing
    file, or a link planted at the path, is never written through)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except FileExistsError:
        raise ValueError(f"{path} already exists: keys are never overwritten; remove it or choose another "
                         f"name") from None
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def load_device_key(path: str, device_id: int) -> bytes:
    keys = load_keys(path)
    if device_id not in keys:
        raise ValueError(f"keys file {path} has no key for device {device_id}")
    return keys[device_id]


def generate(device_ids, nbytes: int = 32) -> str:
    """A fresh keys file for these devices (used by `fedtiny demo` and tests)."""
    import secrets   # here, not at the top: it loads OpenSSL (~3.4 MB of RSS) into every device process
    return "".join(f"{d} {secrets.token_hex(nbytes)}\n" for d in device_ids)


# --- command line: `fedtiny keys` -------------------------------------------------------------

HELP = "generate per-device keys files (mode 0600) for the aggregator and its devices"


def _device_ids(spec: str) -> list[int]:
    """'10' -> 0..9; '3-7,12' -> 3..7 and 12."""
    ids: list[int] = []
    try:
        if spec.isdigit():
            ids = list(range(int(spec)))
        else:
            for part in spec.split(","):
                lo, _, hi = part.partition("-")
                ids += list(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise ValueError(f"--devices {spec!r}: give a count (10) or ids and ranges (0-9,12)") from None
    if not ids or len(set(ids)) != len(ids) or not all(0 <= d <= MAX_DEVICE_ID for d in ids):
        raise ValueError(f"--devices {spec!r}: need distinct device ids in 0..{MAX_DEVICE_ID}")
    return ids


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", metavar="FILE", help="the fleet's keys file, for the aggregator's --keys (must not exist)")
    p.add_argument("--devices", required=True, metavar="N|IDS", help="a count (10: ids 0-9) or ids and ranges (0-9,12)")
    p.add_argument("--bytes", type=int, default=32, help=f"key length, {MIN_KEY_BYTES} to {MAX_KEY_BYTES} (default %(default)s)")
    p.add_argument("--device-files", metavar="DIR", default=None,
                   help="also write DIR/device-<id>.keys holding only that device's line (its client's --key)")


def run_command(args: argparse.Namespace) -> int:
    if not MIN_KEY_BYTES <= args.bytes <= MAX_KEY_BYTES:
        raise ValueError(f"--bytes must be in {MIN_KEY_BYTES}..{MAX_KEY_BYTES}, got {args.bytes}")
    ids = _device_ids(args.devices)
    text = generate(ids, args.bytes)
    if args.device_files is not None:   # check every target first: nothing is half written
        os.makedirs(args.device_files, mode=0o700, exist_ok=True)
        targets = [os.path.join(args.device_files, f"device-{d}.keys") for d in ids]
        taken = [t for t in [args.out, *targets] if os.path.lexists(t)]
        if taken:
            raise ValueError(f"{taken[0]} already exists: keys are never overwritten; remove it or choose another name")
    write_keys(args.out, text)
    print(f"wrote {args.out}: {len(ids)} device key(s), mode 0600")
    if args.device_files is not None:
        for line, target in zip(text.splitlines(keepends=True), targets):
            write_keys(target, line)
        print(f"wrote {len(ids)} device file(s) in {args.device_files}, mode 0600")
    return 0
