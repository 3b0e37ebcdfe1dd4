"""Known answers for the C crypto and CRC the wire codec uses, through the Python binding:
FIPS 180-4 SHA-256 examples, RFC 4231 HMAC-SHA256 cases 1-7, the CRC-32 check value, and
property checks against Python's own hashlib / hmac / zlib as oracles."""
import hashlib
import hmac
import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedtiny.net import wire
from fedtiny._wire import lib

FIPS = [
    (b"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
    (b"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
    (b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
     "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"),
    (b"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqr"
     b"lmnopqrsmnopqrstnopqrstu",
     "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1"),
    (b"a" * 1_000_000, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"),
]

RFC4231 = [
    (b"\x0b" * 20, b"Hi There", "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
    (b"Jefe", b"what do ya want for nothing?",
     "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
    (b"\xaa" * 20, b"\xdd" * 50, "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"),
    (bytes(range(1, 26)), b"\xcd" * 50,
     "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"),
    (b"\x0c" * 20, b"Test With Truncation", "a3b6167473100ee06e0c796c2955552b"),  # 128-bit truncation
    (b"\xaa" * 131, b"Test Using Larger Than Block-Size Key - Hash Key First",
     "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"),
    (b"\xaa" * 131,
     b"This is a test using a larger than block-size key and a larger than block-size data. "
     b"The key needs to be hashed before being used by the HMAC algorithm.",
     "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"),
]


@pytest.mark.parametrize("msg,digest", FIPS, ids=["abc", "empty", "448bit", "896bit", "million_a"])
def test_sha256_fips_180_4(msg, digest):
    assert wire.sha256(msg).hex() == digest


@pytest.mark.parametrize("key,data,mac", RFC4231, ids=[f"case{i}" for i in range(1, 8)])
def test_hmac_sha256_rfc4231(key, data, mac):
    assert wire.hmac_sha256(key, data).hex()[: len(mac)] == mac


def test_crc32_check_value():
    assert lib.ft_crc32(0, b"123456789", 9) == 0xCBF43926


def test_self_test_passes():
    wire.self_test()


@settings(max_examples=300, deadline=None)
@given(key=st.binary(min_size=0, max_size=200), data=st.binary(max_size=600))
def test_sha_hmac_crc_match_python_oracles(key, data):
    assert wire.sha256(data) == hashlib.sha256(data).digest()
    assert wire.hmac_sha256(key, data) == hmac.new(key, data, hashlib.sha256).digest()
    assert lib.ft_crc32(0, data, len(data)) == zlib.crc32(data)


# ---- protocol version 2: whole frames, built here with struct + hmac only --------------------
# The handshake of docs/PROTOCOL.md "Sessions" with fixed values: a join HELLO under the
# pre-shared key, the WELCOME that answers it, the session key both ends derive, and an update
# chunk of the session under that key. The pinned SHA-256 of each frame is the known answer.
PSK = bytes(range(0x40, 0x60))                      # 32-byte pre-shared key of device 7
DEVICE, RUN_ID, EPOCH, SESSION = 7, bytes.fromhex("0123456789abcdef"), 3, 12
DEVICE_NONCE, AGG_NONCE = bytes.fromhex("d0d1d2d3d4d5d6d7"), bytes.fromhex("a0a1a2a3a4a5a6a7")


def _v2_frame(key, msg_type, round_, seq, payload, chunk=(0, 1), session=0, epoch=0, run=0):
    head = struct.pack("<2sBBIIIHHHHII", b"FT", 2, msg_type, DEVICE, round_, seq, chunk[0], chunk[1],
                       len(payload), session, epoch, run)
    return head + payload + hmac.new(key, head + payload, hashlib.sha256).digest()[:16]


def _v2_vectors():
    run = struct.unpack("<I", RUN_ID[:4])[0]
    hello = _v2_frame(PSK, 1, 0, 0, struct.pack("<IHHI8s", 600, 1200, 1, 2, DEVICE_NONCE))
    welcome_payload = struct.pack("<8sIHH8s8s", RUN_ID, EPOCH, SESSION, 0, DEVICE_NONCE, AGG_NONCE)
    welcome = _v2_frame(PSK, 10, 0, 0, welcome_payload, session=SESSION, epoch=EPOCH, run=run)
    k_s = hmac.new(PSK, b"fedtiny/2 session" + struct.pack("<I", DEVICE) + welcome_payload, hashlib.sha256).digest()
    chunk = _v2_frame(k_s, 4, 5, 41, bytes(range(132)), chunk=(2, 3), session=SESSION, epoch=EPOCH, run=run)
    return hello, welcome, k_s, chunk


V2_DIGESTS = {   # sha256 of each vector, pinned
    "hello": "367a955ebaadcf824c0a73bc859afcf4e09beb67d630f16f1c5b428c6d70c59a",
    "welcome": "8e650b2f466fb502a77ee28d64396c1a5d214c20c9a146540228225d663f70bd",
    "session_key": "0ab74780c4a75df8aaf919d963f64757cd8c43a0ec308ef16a6c8b841cc28167",
    "chunk": "c97d32b0f953c847de97880ff7a16855103bdc6eacf8f5ba85ced9523490fe41",
}


def test_v2_frames_match_the_struct_hmac_oracle():
    hello, welcome, k_s, chunk = _v2_vectors()
    w = wire.Welcome(RUN_ID, EPOCH, SESSION, DEVICE_NONCE, AGG_NONCE)
    assert wire.encode(1, DEVICE, 0, 0, wire.Hello(600, 1200, 1, 2, DEVICE_NONCE).pack(), PSK) == hello
    assert wire.encode(10, DEVICE, 0, 0, w.pack(), PSK, session=SESSION, epoch=EPOCH, run=w.run) == welcome
    assert wire.session_key(PSK, DEVICE, w) == k_s
    assert wire.encode(4, DEVICE, 5, 41, bytes(range(132)), k_s, chunk=(2, 3), session=SESSION, epoch=EPOCH,
                       run=w.run) == chunk
    guard = wire.ReplayGuard(5, run=w.run, epoch=EPOCH, session=SESSION)
    f = wire.decode(chunk, k_s, guard)
    assert (f.session, f.epoch, f.run, f.seq, f.chunk) == (SESSION, EPOCH, w.run, 41, (2, 3))
    with pytest.raises(wire.FrameError, match="bad_tag"):   # the pre-shared key does not open a session frame
        wire.decode(chunk, PSK, wire.ReplayGuard(5, run=w.run, epoch=EPOCH, session=SESSION))


def test_v2_known_answers():
    got = dict(zip(("hello", "welcome", "session_key", "chunk"), _v2_vectors()))
    assert {k: hashlib.sha256(v).hexdigest() for k, v in got.items()} == V2_DIGESTS
