/* test_sha256.c - SHA-256 against FIPS 180-4 examples, HMAC-SHA256 against RFC 4231 cases 1-7,
 * incremental updates split at every offset, constant-time compare and the built-in self-test. */
#include "../ft_wire.h"
#include "check.h"

static void check_sha(const char *msg, size_t len, const char *hex)
{
    uint8_t want[32], got[32];
    unhex(hex, want);
    ft_sha256((const uint8_t *)msg, len, got);
    CHECK_MEM(got, want, 32);
}

static void check_hmac(const uint8_t *key, size_t klen, const uint8_t *data, size_t dlen,
                       const char *hex)
{
    uint8_t want[32], got[32];
    size_t n = unhex(hex, want); /* case 5 gives only the first 16 bytes */
    ft_hmac_sha256(key, klen, data, dlen, got);
    CHECK_MEM(got, want, n);
}

int main(void)
{
    static uint8_t million[1000000];
    uint8_t key[131], data[160], one[32], split[32], ipart[32];
    ft_sha256_ctx ctx;
    ft_hmac_sha256_ctx hctx;
    size_t i, k;
    const char *two_block =
        "abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqr"
        "lmnopqrsmnopqrstnopqrstu";

    /* FIPS 180-4 / NIST CAVS examples */
    check_sha("abc", 3, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    check_sha("", 0, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    check_sha("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", 56,
              "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    check_sha(two_block, 112, "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1");
    memset(million, 'a', sizeof million);
    check_sha((const char *)million, sizeof million,
              "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");

    /* Incremental: every split point of a 3-block message gives the one-shot digest. */
    for (i = 0; i < sizeof data; i++) {
        data[i] = (uint8_t)(i * 7u + 3u);
    }
    ft_sha256(data, sizeof data, one);
    for (k = 0; k <= sizeof data; k++) {
        ft_sha256_init(&ctx);
        ft_sha256_update(&ctx, data, k);
        ft_sha256_update(&ctx, data + k, 0);
        ft_sha256_update(&ctx, data + k, sizeof data - k);
        ft_sha256_finish(&ctx, split);
        CHECK_MEM(split, one, 32);
    }
    /* finish zeroizes the context */
    for (i = 0, k = 0; i < sizeof ctx; i++) {
        k |= ((const uint8_t *)&ctx)[i];
    }
    CHECK_EQ_INT(k, 0);

    /* RFC 4231 */
    memset(key, 0x0b, 20);
    check_hmac(key, 20, (const uint8_t *)"Hi There", 8,
               "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
    check_hmac((const uint8_t *)"Jefe", 4, (const uint8_t *)"what do ya want for nothing?", 28,
               "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    memset(key, 0xaa, 20);
    memset(data, 0xdd, 50);
    check_hmac(key, 20, data, 50,
               "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe");
    for (i = 0; i < 25; i++) {
        key[i] = (uint8_t)(i + 1);
    }
    memset(data, 0xcd, 50);
    check_hmac(key, 25, data, 50,
               "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b");
    memset(key, 0x0c, 20);
    check_hmac(key, 20, (const uint8_t *)"Test With Truncation", 20,
               "a3b6167473100ee06e0c796c2955552b");
    memset(key, 0xaa, 131);
    check_hmac(key, 131, (const uint8_t *)"Test Using Larger Than Block-Size Key - Hash Key First",
               54, "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
    check_hmac(key, 131,
               (const uint8_t *)"This is a test using a larger than block-size key and a larger "
                                "than block-size data. The key needs to be hashed before being "
                                "used by the HMAC algorithm.",
               152, "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2");

    /* HMAC incremental == one-shot; the context holds no key bytes after finish */
    memset(key, 0x5a, 32);
    ft_hmac_sha256(key, 32, data, 150, one);
    ft_hmac_sha256_init(&hctx, key, 32);
    ft_hmac_sha256_update(&hctx, data, 77);
    ft_hmac_sha256_update(&hctx, data + 77, 73);
    ft_hmac_sha256_finish(&hctx, ipart);
    CHECK_MEM(ipart, one, 32);
    for (i = 0, k = 0; i < sizeof hctx; i++) {
        k |= ((const uint8_t *)&hctx)[i];
    }
    CHECK_EQ_INT(k, 0);

    /* constant-time compare: equal, and a difference at every position and every bit */
    memcpy(split, one, 32);
    CHECK_EQ_INT(ft_ct_equal(one, split, 32), 1);
    CHECK_EQ_INT(ft_ct_equal(one, split, 0), 1);
    for (i = 0; i < 32 * 8; i++) {
        split[i / 8] ^= (uint8_t)(1u << (i % 8));
        CHECK_EQ_INT(ft_ct_equal(one, split, 32), 0);
        split[i / 8] ^= (uint8_t)(1u << (i % 8));
    }

    CHECK_EQ_INT(ft_crc32(0, (const uint8_t *)"123456789", 9), 0xCBF43926L);
    CHECK_EQ_INT(ft_crc32(ft_crc32(0, (const uint8_t *)"1234", 4), (const uint8_t *)"56789", 5),
                 0xCBF43926L);
    CHECK_EQ_INT(ft_wire_self_test(), FT_WIRE_OK);
    return check_report("test_sha256");
}
