"""Known answers for the C crypto and CRC the wire codec uses, through the Python binding:
FIPS 180-4 SHA-256 examples, RFC 4231 HMAC-SHA256 cases 1-7, the CRC-32 check value, and
property checks against Python's own hashlib / hmac / zlib as oracles."""
import hashlib
import hmac
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
