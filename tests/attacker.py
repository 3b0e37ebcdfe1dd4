"""A malicious device for the attack tests: the real `fedtiny client` with a valid key whose
updates and sample counts are hostile. Usage (the client's own arguments follow the mode):

    python tests/attacker.py MODE --server HOST:PORT --device-id ID --key FILE --data NPZ --model M

MODE, per round r (1, 2, ...):
    flip10     the honest delta, sign-flipped and multiplied by 10
    maxscale   every block scale FLT_MAX/127 (the largest the codec accepts), q = +-127
    nk         the honest update with RESULT n_samples = 2^32 - 1 (its HELLO stays honest)
    hellonk    HELLO with n_samples = 2^32 - 1
    bignk      HELLO and RESULT both with n_samples = 2^32 - 1 (consistent, for a raised --max-samples)
    cycle      round r takes nk, maxscale, flip10 for r % 3 = 1, 2, 0
It trains exactly as an honest device does (same seeds), then lies.
"""
from __future__ import annotations

import dataclasses
import sys

import numpy as np

from fedtiny import codec
from fedtiny.net import client, wire

MODES = ("flip10", "maxscale", "nk", "hellonk", "bignk", "cycle")
MAX_U32 = 2**32 - 1


def _max_scale_update(n: int, seed: int) -> codec.Int8Update:
    rng = np.random.default_rng(seed)
    blocks = np.zeros(codec.nblocks(n), dtype=codec.BLOCK_DTYPE)
    blocks["d"] = codec.MAX_SCALE
    blocks["q"] = rng.choice(np.array([-127, 127], np.int8), size=blocks["q"].shape)
    header = codec.HEADER.pack(codec.MAGIC, codec.VERSION, 0, codec.QK, n, 0)
    return codec.Int8Update.from_bytes(header + blocks.tobytes())


class HostileDevice(client.Device):
    mode = "cycle"

    def _mode(self, round_id: int) -> str:
        if round_id == 0:
            return "none"
        return {1: "nk", 2: "maxscale", 0: "flip10"}[round_id % 3] if self.mode == "cycle" else self.mode

    def _local_update(self, round_id, offer, params):
        update, res = super()._local_update(round_id, offer, params)
        mode = self._mode(round_id)
        if mode == "flip10":
            update = codec.encode((-10.0 * update.decode()).astype(np.float32))
        elif mode == "maxscale":
            update = _max_scale_update(len(update), round_id)
        return update, res

    def _send(self, msg_type, payload=b"", chunk=(0, 1), round_id=None):
        if msg_type == wire.MsgType.RESULT and self._mode(self.round) in ("nk", "bignk"):
            payload = dataclasses.replace(wire.Result.unpack(payload), n_samples=MAX_U32).pack()
        if msg_type == wire.MsgType.HELLO and self.mode in ("hellonk", "bignk"):
            payload = dataclasses.replace(wire.Hello.unpack(payload), n_samples=MAX_U32).pack()
        super()._send(msg_type, payload, chunk, round_id)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in MODES:
        print(f"usage: attacker.py {{{','.join(MODES)}}} CLIENT-ARGS...", file=sys.stderr)
        return 2
    HostileDevice.mode = argv[0]
    client.Device = HostileDevice      # run_command builds the device by this name
    from fedtiny import cli
    return cli.main(["client", *argv[1:]])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
