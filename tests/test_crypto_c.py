"""The firmware's secure-aggregation crypto (firmware_bridge/ft_crypto.h, through fedtiny._wire)
against `cryptography` (OpenSSL) on random inputs, many trials, and against the RFCs' vectors:
ChaCha20, Poly1305 and the AEAD (RFC 8439), HKDF-SHA256 (RFC 5869), X25519 (RFC 7748), Shamir."""
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


# ---- HKDF, Poly1305, AEAD, X25519 against OpenSSL (through `cryptography`) ---------------------

from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey  # noqa: E402
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305  # noqa: E402
from cryptography.hazmat.primitives.kdf.hkdf import HKDF  # noqa: E402
from cryptography.hazmat.primitives.poly1305 import Poly1305  # noqa: E402
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat  # noqa: E402

from fedtiny.privacy import shamir  # noqa: E402


def _buf(n):
    return ffi.new("uint8_t[]", max(n, 1))


def hkdf_c(salt: bytes, ikm: bytes, info: bytes, n: int) -> bytes:
    out = _buf(n)
    assert lib.ft_hkdf_sha256(salt or ffi.NULL, len(salt), ikm or ffi.NULL, len(ikm), info or ffi.NULL, len(info),
                              out, n) == lib.FT_WIRE_OK
    return bytes(ffi.buffer(out, n))


def test_hkdf_equals_openssl_on_random_inputs():
    rng = random.Random(5)
    for _ in range(300):
        salt, ikm, info = (os.urandom(rng.choice([0, 1, 32, 64, 65, rng.randrange(200)])) for _ in range(3))
        n = rng.choice([1, 31, 32, 33, 64, rng.randrange(1, 255 * 32 + 1)])
        want = HKDF(hashes.SHA256(), n, salt or None, info).derive(ikm)
        assert hkdf_c(salt, ikm, info, n) == want


def test_hkdf_rfc5869_case_3_and_length_limit():
    assert hkdf_c(b"", b"\x0b" * 22, b"", 42).hex() == (
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8")
    out = _buf(255 * 32 + 1)
    assert lib.ft_hkdf_sha256(ffi.NULL, 0, b"k", 1, ffi.NULL, 0, out, 255 * 32 + 1) == lib.FT_WIRE_ERR_ARG


def test_poly1305_equals_openssl_on_random_inputs():
    rng = random.Random(6)
    tag = ffi.new("uint8_t[16]")
    for _ in range(500):
        key = os.urandom(32)
        if rng.random() < 0.2:   # r and s near their extremes exercise the final reduction
            key = bytes([0xff] * 16) + os.urandom(16)
        msg = os.urandom(rng.choice([0, 1, 15, 16, 17, rng.randrange(600)]))
        if rng.random() < 0.2:
            msg = b"\xff" * len(msg)
        lib.ft_poly1305(key, msg, len(msg), tag)
        assert bytes(tag) == Poly1305.generate_tag(key, msg)


def aead_encrypt_c(key, nonce, aad, pt):
    ct, tag = _buf(len(pt)), ffi.new("uint8_t[16]")
    assert lib.ft_aead_chacha20poly1305_encrypt(key, nonce, aad or ffi.NULL, len(aad), pt or ffi.NULL, len(pt),
                                                ct, tag) == lib.FT_WIRE_OK
    return bytes(ffi.buffer(ct, len(pt))) + bytes(tag)


def aead_decrypt_c(key, nonce, aad, ct_tag):
    ct, tag = ct_tag[:-16], ct_tag[-16:]
    pt = _buf(len(ct))
    st = lib.ft_aead_chacha20poly1305_decrypt(key, nonce, aad or ffi.NULL, len(aad), ct or ffi.NULL, len(ct), tag, pt)
    return st, bytes(ffi.buffer(pt, len(ct)))


def test_aead_interoperates_with_openssl_both_ways():
    rng = random.Random(7)
    for _ in range(300):
        key, nonce = os.urandom(32), os.urandom(12)
        aad = os.urandom(rng.choice([0, 1, 16, rng.randrange(100)]))
        pt = os.urandom(rng.choice([0, 1, 63, 64, 65, rng.randrange(1200)]))
        ours = aead_encrypt_c(key, nonce, aad, pt)
        theirs = ChaCha20Poly1305(key).encrypt(nonce, pt, aad or None)
        assert ours == theirs
        assert aead_decrypt_c(key, nonce, aad, theirs) == (lib.FT_WIRE_OK, pt)
        # one flipped bit anywhere (ciphertext, tag) or another AAD: refused, no plaintext out
        bad = bytearray(theirs)
        bad[rng.randrange(len(bad))] ^= 1 << rng.randrange(8)
        st, out = aead_decrypt_c(key, nonce, aad, bytes(bad))
        assert st == lib.FT_WIRE_ERR_BAD_TAG and out == bytes(len(pt))
        st, _ = aead_decrypt_c(key, nonce, aad + b"x", theirs)
        assert st == lib.FT_WIRE_ERR_BAD_TAG


def x25519_c(k: bytes, u: bytes) -> tuple[int, bytes]:
    out = ffi.new("uint8_t[32]")
    st = lib.ft_x25519(out, k, u)
    return st, bytes(out)


def test_x25519_interoperates_with_openssl():
    pub = ffi.new("uint8_t[32]")
    for _ in range(200):
        a, b = X25519PrivateKey.generate(), X25519PrivateKey.generate()
        a_raw = a.private_bytes_raw()
        lib.ft_x25519_public(pub, a_raw)
        assert bytes(pub) == a.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        b_pub = b.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        assert x25519_c(a_raw, b_pub) == (lib.FT_WIRE_OK, a.exchange(b.public_key()))
        assert x25519_c(b.private_bytes_raw(), bytes(pub)) == (lib.FT_WIRE_OK, b.exchange(a.public_key()))


def test_x25519_on_arbitrary_u_coordinates_equals_openssl():
    """Random 32-byte strings as u (top bit set, values >= p): both mask bit 255 and reduce mod p."""
    p = 2**255 - 19
    us = [os.urandom(32) for _ in range(150)] + [(p + 5).to_bytes(32, "little"), (2**255 - 1).to_bytes(32, "little"),
                                                 (p - 1).to_bytes(32, "little")]
    for u in us:
        k = os.urandom(32)
        st, ours = x25519_c(k, u)
        try:
            want = X25519PrivateKey.from_private_bytes(k).exchange(X25519PublicKey.from_public_bytes(u))
        except ValueError:   # OpenSSL refuses the all-zero result of a small-order point
            assert st == lib.FT_WIRE_ERR_BAD_PAYLOAD and ours == bytes(32)
            continue
        assert (st, ours) == (lib.FT_WIRE_OK, want)


@pytest.mark.parametrize("u_int", [0, 1, 2**255 - 19, 2**255 - 18])
def test_x25519_refuses_small_order_points_like_openssl(u_int):
    u = u_int.to_bytes(32, "little")
    assert x25519_c(os.urandom(32), u) == (lib.FT_WIRE_ERR_BAD_PAYLOAD, bytes(32))
    with pytest.raises(ValueError):
        X25519PrivateKey.generate().exchange(X25519PublicKey.from_public_bytes(u))


# ---- Shamir (the C one, through fedtiny.privacy.shamir) -------------------------------------------

def test_shamir_any_t_of_n_recover_and_fewer_do_not():
    rng = random.Random(8)
    for _ in range(100):
        n = rng.randrange(1, 20)
        t = rng.randrange(1, n + 1)
        secret = os.urandom(32)
        shares = shamir.split(secret, n, t)
        assert [s[0] for s in shares] == list(range(1, n + 1))
        pick = rng.sample(shares, rng.randrange(t, n + 1))
        assert shamir.combine(pick) == secret
        if t > 1:
            assert shamir.combine(rng.sample(shares, t - 1)) != secret


def test_shamir_below_threshold_reveals_nothing():
    """t - 1 shares are uniform whatever the secret: for t = 2 one share's byte is secret + a*x with
    a uniform, so its histogram over many splits is flat for secret 0x00 and for 0xff alike."""
    for secret in (b"\x00", b"\xff"):
        counts = [0] * 256
        for a in range(256):   # every coefficient once: the share byte must take every value once
            counts[shamir.split(secret, 3, 2, random=bytes([a]))[1][1]] += 1
        assert counts == [1] * 256


def test_shamir_matches_a_python_lagrange_oracle():
    """An independent GF(2^8) oracle: evaluate the polynomial with the given coefficients in Python."""
    def mul(a, b):
        p = 0
        for i in range(8):
            if b >> i & 1:
                p ^= a << i
        for i in range(15, 7, -1):
            if p >> i & 1:
                p ^= 0x11B << (i - 8)
        return p
    secret, coeffs = os.urandom(16), os.urandom(3 * 16)
    shares = shamir.split(secret, 6, 4, random=coeffs)
    for s in shares:
        x = s[0]
        for b in range(16):
            y, xp = secret[b], 1
            for k in range(1, 4):
                xp = mul(xp, x)
                y ^= mul(coeffs[(k - 1) * 16 + b], xp)
            assert s[1 + b] == y


def test_shamir_rejects_bad_input():
    shares = shamir.split(b"k" * 32, 5, 3)
    with pytest.raises(ValueError, match="distinct nonzero x"):
        shamir.combine([shares[0], shares[0], shares[1]])
    with pytest.raises(ValueError, match="distinct nonzero x"):
        shamir.combine([b"\x00" + shares[0][1:], shares[1]])
    with pytest.raises(ValueError, match="same length"):
        shamir.combine([shares[0], shares[1][:-1]])
    with pytest.raises(ValueError, match="1 <= t <= n <= 255"):
        shamir.split(b"k", 3, 4)
    with pytest.raises(ValueError, match="1 <= t <= n <= 255"):
        shamir.split(b"k", 256, 2)
    with pytest.raises(ValueError, match="needs 2 random bytes"):
        shamir.split(b"k", 3, 3, random=b"x")
