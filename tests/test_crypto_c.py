"""The firmware's secure-aggregation crypto (firmware_bridge/ft_crypto.h, through fedtiny._wire)
against `cryptography` (OpenSSL) on random inputs, many trials, and against the RFCs' vectors:
ChaCha20 (RFC 8439)."""
import os
import random

import pytest

cryptography = pytest.importorskip("cryptography")
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms  # noqa: E402

from fedtiny import _wire  # noqa: E402

ffi, lib = _wire.ffi, _wire.lib


def chacha20_c(key: bytes, counter: int, nonce: bytes, data: bytes | None, n: int) -> bytes:
    out = ffi.new("uint8_t[]", max(n, 1))
    src = ffi.NULL if data is None else ffi.from_buffer(data)
    assert lib.ft_chacha20_xor(key, counter, nonce, src, out, n) == lib.FT_WIRE_OK
    return bytes(ffi.buffer(out, n))


def chacha20_openssl(key: bytes, counter: int, nonce: bytes, data: bytes) -> bytes:
    # cryptography's ChaCha20 takes a 16-byte "nonce": the 32-bit little-endian counter, then the nonce.
    enc = Cipher(algorithms.ChaCha20(key, counter.to_bytes(4, "little") + nonce), mode=None).encryptor()
    return enc.update(data) + enc.finalize()


def test_chacha20_rfc8439_block_and_cipher():
    key = bytes(range(32))
    out = ffi.new("uint8_t[64]")
    lib.ft_chacha20_block(key, 1, bytes.fromhex("000000090000004a00000000"), out)
    assert bytes(out).hex() == ("10f1e7e4d13b5915500fdd1fa32071c4c7d1f4c733c068030422aa9ac3d46c4e"
                                "d2826446079faa0914c2d705d98b02a2b5129cd1de164eb9cbd083e8a2503c4e")  # §2.3.2
    pt = (b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future,"
          b" sunscreen would be it.")
    ct = chacha20_c(key, 1, bytes.fromhex("000000000000004a00000000"), pt, len(pt))
    assert ct.hex() == ("6e2e359a2568f98041ba0728dd0d6981e97e7aec1d4360c20a27afccfd9fae0b"
                        "f91b65c5524733ab8f593dabcd62b3571639d624e65152ab8f530c359f0861d8"
                        "07ca0dbf500d6a6156a38e088a22b65e52bc514d16ccf806818ce91ab7793736"
                        "5af90bbf74a35be6b40b8eedf2785e42874d")  # §2.4.2


def test_chacha20_equals_openssl_on_random_inputs():
    rng = random.Random(11)
    for trial in range(300):
        key, nonce = os.urandom(32), os.urandom(12)
        counter = rng.choice([0, 1, rng.randrange(2**32 - 64), 2**32 - 3])
        n = rng.choice([0, 1, 63, 64, 65, rng.randrange(1, 1000)])
        n = min(n, (2**32 - counter) * 64)
        data = os.urandom(n)
        assert chacha20_c(key, counter, nonce, data, n) == chacha20_openssl(key, counter, nonce, data), trial
        assert chacha20_c(key, counter, nonce, None, n) == chacha20_openssl(key, counter, nonce, bytes(n))


def test_chacha20_refuses_a_wrapping_counter():
    key, nonce = bytes(32), bytes(12)
    out = ffi.new("uint8_t[65]")
    assert lib.ft_chacha20_xor(key, 2**32 - 1, nonce, ffi.NULL, out, 64) == lib.FT_WIRE_OK
    assert lib.ft_chacha20_xor(key, 2**32 - 1, nonce, ffi.NULL, out, 65) == lib.FT_WIRE_ERR_ARG
