/* test_crypto.c - the secure-aggregation crypto against its RFCs: HKDF-SHA256 (RFC 5869 A.1-A.3),
 * Poly1305 (RFC 8439 §2.5.2, A.3 #1 and #2), AEAD_CHACHA20_POLY1305 (§2.8.2; every single-bit
 * change of ciphertext, tag or AAD refused), X25519 (RFC 7748 §5.2 vectors, the 1 and 1,000
 * iteration tests, §6.1 Diffie-Hellman, small-order points refused), GF(2^8) against a slow
 * carry-less reference on all 65,536 pairs, Shamir split/combine over every t-subset. */
#include "../ft_crypto.h"
#include "check.h"

static void hex_eq(const uint8_t *got, const char *hex)
{
    uint8_t want[256];
    size_t n = unhex(hex, want);
    CHECK_MEM(got, want, n);
}

static void check_hkdf(const uint8_t *ikm, size_t ikm_len, const uint8_t *salt, size_t salt_len,
                       const uint8_t *info, size_t info_len, size_t L, const char *prk_hex, const char *okm_hex)
{
    uint8_t prk[32], okm[128];
    ft_hkdf_sha256_extract(salt, salt_len, ikm, ikm_len, prk);
    hex_eq(prk, prk_hex);
    CHECK_EQ_INT(ft_hkdf_sha256_expand(prk, info, info_len, okm, L), FT_WIRE_OK);
    hex_eq(okm, okm_hex);
    memset(okm, 0, sizeof okm);
    CHECK_EQ_INT(ft_hkdf_sha256(salt, salt_len, ikm, ikm_len, info, info_len, okm, L), FT_WIRE_OK);
    hex_eq(okm, okm_hex);
}

static void test_hkdf(void)
{
    uint8_t ikm[80], salt[80], info[80], okm[16];
    size_t i;
    memset(ikm, 0x0b, 22);
    for (i = 0; i < 13; i++) salt[i] = (uint8_t)i;
    for (i = 0; i < 10; i++) info[i] = (uint8_t)(0xf0 + i);
    check_hkdf(ikm, 22, salt, 13, info, 10, 42, /* A.1 */
               "077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5",
               "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865");
    for (i = 0; i < 80; i++) {
        ikm[i] = (uint8_t)i;
        salt[i] = (uint8_t)(0x60 + i);
        info[i] = (uint8_t)(0xb0 + i);
    }
    check_hkdf(ikm, 80, salt, 80, info, 80, 82, /* A.2 */
               "06a6b88c5853361a06104c9ceb35b45cef760014904671014a193f40c15fc244",
               "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c"
               "59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71"
               "cc30c58179ec3e87c14c01d5c1f3434f1d87");
    memset(ikm, 0x0b, 22);
    check_hkdf(ikm, 22, NULL, 0, NULL, 0, 42, /* A.3 */
               "19ef24a32c717b167f33a91d6f648bdf96596776afdb6377ac434c1c293ccb04",
               "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8");
    CHECK_EQ_INT(ft_hkdf_sha256(NULL, 0, ikm, 22, NULL, 0, okm, 255 * 32 + 1), FT_WIRE_ERR_ARG);
}

static void test_poly1305(void)
{
    uint8_t key[32], msg[64], tag[16], t2[16];
    ft_poly1305_ctx ctx;
    size_t k;
    const char *text = "Cryptographic Forum Research Group";
    unhex("85d6be7857556d337f4452fe42d506a80103808afb0db2fd4abff6af4149f51b", key);
    ft_poly1305(key, (const uint8_t *)text, 34, tag);
    hex_eq(tag, "a8061dc1305136c6c22b8baf0c0127a9"); /* §2.5.2 */
    for (k = 0; k <= 34; k++) { /* split at every point: the same tag */
        ft_poly1305_init(&ctx, key);
        ft_poly1305_update(&ctx, (const uint8_t *)text, k);
        ft_poly1305_update(&ctx, (const uint8_t *)text + k, 34 - k);
        ft_poly1305_finish(&ctx, t2);
        CHECK_MEM(t2, tag, 16);
    }
    memset(key, 0, 32);
    memset(msg, 0, 64);
    ft_poly1305(key, msg, 64, tag);
    hex_eq(tag, "00000000000000000000000000000000"); /* A.3 #1 */
    unhex("0000000000000000000000000000000036e5f6b5c5e06070f0efca96227a863e", key);
    {
        const char *ietf = "Any submission to the IETF intended by the Contributor for publication as all or "
                           "part of an IETF Internet-Draft or RFC and any statement made within the context "
                           "of an IETF activity is considered an \"IETF Contribution\". Such statements include "
                           "oral statements in IETF sessions, as well as written and electronic communications "
                           "made at any time or place, which are addressed to";
        ft_poly1305(key, (const uint8_t *)ietf, strlen(ietf), tag);
        hex_eq(tag, "36e5f6b5c5e06070f0efca96227a863e"); /* A.3 #2 */
    }
}

static void test_aead(void)
{
    uint8_t key[32], nonce[12], aad[12], pt[114], ct[114], back[114], tag[16], bad[16];
    size_t i;
    memcpy(pt, "Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, "
               "sunscreen would be it.", 114);
    unhex("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f", key);
    unhex("070000004041424344454647", nonce);
    unhex("50515253c0c1c2c3c4c5c6c7", aad);
    CHECK_EQ_INT(ft_aead_chacha20poly1305_encrypt(key, nonce, aad, 12, pt, 114, ct, tag), FT_WIRE_OK);
    hex_eq(ct, "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d63dbea45e8ca9671282fafb69da92728b"
               "1a71de0a9e060b2905d6a5b67ecd3b3692ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc"
               "3ff4def08e4b7a9de576d26586cec64b6116");
    hex_eq(tag, "1ae10b594f09e26a7e902ecbd0600691"); /* §2.8.2 */
    CHECK_EQ_INT(ft_aead_chacha20poly1305_decrypt(key, nonce, aad, 12, ct, 114, tag, back), FT_WIRE_OK);
    CHECK_MEM(back, pt, 114);
    for (i = 0; i < 114 * 8; i += 7) { /* a flipped ciphertext bit */
        ct[i / 8] ^= (uint8_t)(1u << (i % 8));
        memset(back, 0x55, sizeof back);
        CHECK_EQ_INT(ft_aead_chacha20poly1305_decrypt(key, nonce, aad, 12, ct, 114, tag, back), FT_WIRE_ERR_BAD_TAG);
        CHECK_EQ_INT(back[0] | back[57] | back[113], 0);
        ct[i / 8] ^= (uint8_t)(1u << (i % 8));
    }
    for (i = 0; i < 128; i++) { /* every tag bit */
        memcpy(bad, tag, 16);
        bad[i / 8] ^= (uint8_t)(1u << (i % 8));
        CHECK_EQ_INT(ft_aead_chacha20poly1305_decrypt(key, nonce, aad, 12, ct, 114, bad, back), FT_WIRE_ERR_BAD_TAG);
    }
    for (i = 0; i < 96; i++) { /* every AAD bit */
        aad[i / 8] ^= (uint8_t)(1u << (i % 8));
        CHECK_EQ_INT(ft_aead_chacha20poly1305_decrypt(key, nonce, aad, 12, ct, 114, tag, back), FT_WIRE_ERR_BAD_TAG);
        aad[i / 8] ^= (uint8_t)(1u << (i % 8));
    }
    CHECK_EQ_INT(ft_aead_chacha20poly1305_decrypt(key, nonce, aad, 11, ct, 114, tag, back), FT_WIRE_ERR_BAD_TAG);
    /* in place, and empty plaintext / AAD */
    memcpy(back, pt, 114);
    CHECK_EQ_INT(ft_aead_chacha20poly1305_encrypt(key, nonce, aad, 12, back, 114, back, tag), FT_WIRE_OK);
    CHECK_MEM(back, ct, 114);
    CHECK_EQ_INT(ft_aead_chacha20poly1305_decrypt(key, nonce, aad, 12, back, 114, tag, back), FT_WIRE_OK);
    CHECK_MEM(back, pt, 114);
    CHECK_EQ_INT(ft_aead_chacha20poly1305_encrypt(key, nonce, NULL, 0, NULL, 0, NULL, tag), FT_WIRE_OK);
    CHECK_EQ_INT(ft_aead_chacha20poly1305_decrypt(key, nonce, NULL, 0, NULL, 0, tag, NULL), FT_WIRE_OK);
    CHECK_EQ_INT(ft_aead_chacha20poly1305_encrypt(key, nonce, NULL, 1, pt, 1, ct, tag), FT_WIRE_ERR_ARG);
}

static void check_x25519(const char *k_hex, const char *u_hex, const char *out_hex)
{
    uint8_t k[32], u[32], out[32];
    unhex(k_hex, k);
    unhex(u_hex, u);
    CHECK_EQ_INT(ft_x25519(out, k, u), FT_WIRE_OK);
    hex_eq(out, out_hex);
}

static void test_x25519(void)
{
    uint8_t k[32], u[32], r[32], a[32], b[32], pa[32], pb[32], s1[32], s2[32];
    int i;
    check_x25519("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
                 "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
                 "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552");
    check_x25519("4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
                 "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
                 "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957");
    /* §5.2 iterations: k = u = 9; k, u = X25519(k, u), k */
    memset(k, 0, 32);
    k[0] = 9;
    memcpy(u, k, 32);
    for (i = 1; i <= 1000; i++) {
        CHECK_EQ_INT(ft_x25519(r, k, u), FT_WIRE_OK);
        memcpy(u, k, 32);
        memcpy(k, r, 32);
        if (i == 1) hex_eq(k, "422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079");
    }
    hex_eq(k, "684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51");
    /* §6.1 */
    unhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a", a);
    unhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb", b);
    ft_x25519_public(pa, a);
    ft_x25519_public(pb, b);
    hex_eq(pa, "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
    hex_eq(pb, "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f");
    CHECK_EQ_INT(ft_x25519(s1, a, pb), FT_WIRE_OK);
    CHECK_EQ_INT(ft_x25519(s2, b, pa), FT_WIRE_OK);
    hex_eq(s1, "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742");
    CHECK_MEM(s1, s2, 32);
    /* small-order points give the all-zero secret: refused */
    memset(u, 0, 32);
    CHECK_EQ_INT(ft_x25519(r, a, u), FT_WIRE_ERR_BAD_PAYLOAD);
    CHECK_EQ_INT(r[0] | r[31], 0);
    u[0] = 1;
    CHECK_EQ_INT(ft_x25519(r, a, u), FT_WIRE_ERR_BAD_PAYLOAD);
    /* p + 1 = 2^255 - 18 is the point 1 again (non-canonical input, reduced) */
    unhex("eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f", u);
    CHECK_EQ_INT(ft_x25519(r, a, u), FT_WIRE_ERR_BAD_PAYLOAD);
}

static uint8_t gf_mul_slow(uint8_t a, uint8_t b)
{
    unsigned p = 0, i;
    for (i = 0; i < 8; i++) {
        if (b & (1u << i)) p ^= (unsigned)a << i;
    }
    for (i = 15; i >= 8; i--) {
        if (p & (1u << i)) p ^= 0x11Bu << (i - 8);
    }
    return (uint8_t)p;
}

static void test_shamir(void)
{
    uint8_t secret[32], rnd[9 * 32], shares[10 * 33], pick[10 * 33], back[32];
    unsigned a, b, n, t, mask, count, j, trial, seed = 12345;
    int fails = 0;
    for (a = 0; a < 256; a++) {
        for (b = 0; b < 256; b++) {
            fails += ft_gf256_mul((uint8_t)a, (uint8_t)b) != gf_mul_slow((uint8_t)a, (uint8_t)b);
        }
        if (a > 0) {
            fails += ft_gf256_mul((uint8_t)a, ft_gf256_inv((uint8_t)a)) != 1;
        }
    }
    CHECK_EQ_INT(fails, 0);
    CHECK_EQ_INT(ft_gf256_inv(0), 0);
    CHECK_EQ_INT(ft_gf256_mul(0x53, 0xCA), 0x01); /* FIPS-197 §4.2: {53} and {CA} are inverses */
    CHECK_EQ_INT(ft_gf256_mul(0x57, 0x83), 0xC1); /* FIPS-197 §4.2 example */

    for (trial = 0; trial < 4; trial++) {
        for (n = 1; n <= 10; n += 3) {
            for (t = 1; t <= n; t++) {
                for (j = 0; j < sizeof secret; j++) secret[j] = (uint8_t)((seed = seed * 1103515245u + 12345u) >> 16);
                for (j = 0; j < sizeof rnd; j++) rnd[j] = (uint8_t)((seed = seed * 1103515245u + 12345u) >> 16);
                CHECK_EQ_INT(ft_shamir_split(secret, 32, (uint8_t)n, (uint8_t)t, rnd, shares), FT_WIRE_OK);
                for (mask = 1; mask < (1u << n); mask++) { /* every subset of the shares */
                    count = 0;
                    for (j = 0; j < n; j++) {
                        if (mask & (1u << j)) memcpy(pick + 33 * count++, shares + 33 * j, 33);
                    }
                    CHECK_EQ_INT(ft_shamir_combine(pick, (uint8_t)count, 32, back), FT_WIRE_OK);
                    if (count >= t) {
                        CHECK_MEM(back, secret, 32);
                    } else if (count > 0) { /* below the threshold: not the secret (2^-256 chance) */
                        CHECK(memcmp(back, secret, 32) != 0);
                    }
                }
            }
        }
    }
    CHECK_EQ_INT(ft_shamir_split(secret, 32, 3, 4, rnd, shares), FT_WIRE_ERR_ARG);
    CHECK_EQ_INT(ft_shamir_split(secret, 32, 3, 0, rnd, shares), FT_WIRE_ERR_ARG);
    CHECK_EQ_INT(ft_shamir_split(secret, 32, 5, 3, rnd, shares), FT_WIRE_OK);
    memcpy(pick, shares, 33);
    memcpy(pick + 33, shares, 33); /* the same x twice */
    CHECK_EQ_INT(ft_shamir_combine(pick, 2, 32, back), FT_WIRE_ERR_ARG);
    pick[33] = 0; /* x = 0 would be the secret itself */
    CHECK_EQ_INT(ft_shamir_combine(pick, 2, 32, back), FT_WIRE_ERR_ARG);
}

int main(void)
{
    test_hkdf();
    test_poly1305();
    test_aead();
    test_x25519();
    test_shamir();
    return check_report("test_crypto");
}
