"""Coverage-guided fuzzing of fedtiny.net.wire's decoders with atheris (not part of the test run).

    pip install atheris
    python tests/fuzz_wire_atheris.py -atheris_runs=2000000

Each input is tried as a frame (decode with a replay guard, then peek), as a re-signed frame
(the tag recomputed, so authentic but malformed frames reach the round, replay and payload
checks), as every payload layout, and as serial line bytes. Anything but FrameError is a bug.
Prints the number of inputs tried at the end.
"""
import hashlib
import hmac
import sys

import atheris

with atheris.instrument_imports():
    from fedtiny.net import wire

KEY = b"atheris-fuzz-key-0123456789abcde"
COUNT = [0]
PAYLOADS = (wire.Hello, wire.Offer, wire.Result, wire.Ack, wire.ErrorMsg, wire.Welcome)


def one(data: bytes) -> None:
    COUNT[0] += 1
    signed = data
    if len(data) >= 48:
        signed = data[:-16] + hmac.new(KEY, data[:-16], hashlib.sha256).digest()[:16]
    for frame in (data, signed):
        try:   # bound to the session the bytes name, so frames get past the session check to the tag
            h = wire.peek(frame)
            ctx = dict(run=h.run, epoch=h.epoch, session=h.session)
        except wire.FrameError:
            ctx = {}
        guard = wire.ReplayGuard(data[8] if len(data) > 8 else 0, **ctx)
        try:
            f = wire.decode(frame, KEY, guard, accept_newer_round=bool(data[-1:] == b"\x01"))
        except wire.FrameError:
            continue
        again = wire.encode(f.type, f.device_id, f.round, f.seq, f.payload, KEY, chunk=f.chunk, session=f.session,
                            epoch=f.epoch, run=f.run)
        assert again == frame, "an accepted frame must re-encode to the same bytes"
        for cls in PAYLOADS:
            try:
                cls.unpack(f.payload)
            except wire.FrameError:
                pass
    for cls in PAYLOADS:
        try:
            cls.unpack(data)
        except wire.FrameError:
            pass
    dec = wire.StreamDecoder(max_frame=1 + (data[0] if data else 0) * 5)
    for f in dec.feed(data):
        assert len(f) <= dec.max_frame


def main() -> None:
    atheris.Setup(sys.argv, one)
    try:
        atheris.Fuzz()
    finally:
        print(f"fuzz_wire_atheris: {COUNT[0]} inputs, 0 crashes", flush=True)


if __name__ == "__main__":
    main()
