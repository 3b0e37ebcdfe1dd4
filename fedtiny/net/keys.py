"""Per-device pre-shared keys: a text file, one `device_id hexkey` per line.

    # comments and blank lines are ignored
    0 000102030405060708090a0b0c0d0e0f
    1 8f1c...                            (16 to 64 bytes: 32 to 128 hex digits)

The aggregator loads every device's key; a device's own file may hold only its line. The file
holds secrets: keep it readable by its owner only.
"""
from __future__ import annotations


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
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"keys file {path}: {exc}") from None
    keys = parse_keys(text, path)
    if not keys:
        raise ValueError(f"keys file {path} holds no keys")
    return keys


def load_device_key(path: str, device_id: int) -> bytes:
    keys = load_keys(path)
    if device_id not in keys:
        raise ValueError(f"keys file {path} has no key for device {device_id}")
    return keys[device_id]


def generate(device_ids, nbytes: int = 32) -> str:
    """A fresh keys file for these devices (used by `fedtiny demo` and tests)."""
    import secrets   # here, not at the top: it loads OpenSSL (~3.4 MB of RSS) into every device process
    return "".join(f"{d} {secrets.token_hex(nbytes)}\n" for d in device_ids)
