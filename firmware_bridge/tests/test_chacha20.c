/* test_chacha20.c - ChaCha20 against RFC 8439: the block function (§2.3.2, A.1 #1-#5), the
 * cipher (§2.4.2, A.2 #1), the Poly1305 key generation block (§2.6.2); streaming from any
 * counter equals block-by-block output; the counter-wrap guard. */
#include "../ft_crypto.h"
#include "check.h"

static void check_block(const char *key_hex, const char *nonce_hex, uint32_t counter, const char *want_hex)
{
    uint8_t key[32], nonce[12], want[64], got[64];
    size_t n;
    unhex(key_hex, key);
    unhex(nonce_hex, nonce);
    n = unhex(want_hex, want);
    ft_chacha20_block(key, counter, nonce, got);
    CHECK_MEM(got, want, n);
}

int main(void)
{
    uint8_t key[32], nonce[12], pt[114], ct[114], want[114], buf[300], one[64];
    size_t i, k;
    const char *sunscreen = "Ladies and Gentlemen of the class of '99: If I could offer you only one tip "
                            "for the future, sunscreen would be it.";
    const char *k0_31 = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const char *zero32 = "0000000000000000000000000000000000000000000000000000000000000000";
    uint32_t st[16], out[16];

    /* §2.3.2 */
    check_block(k0_31, "000000090000004a00000000", 1,
                "10f1e7e4d13b5915500fdd1fa32071c4c7d1f4c733c068030422aa9ac3d46c4e"
                "d2826446079faa0914c2d705d98b02a2b5129cd1de164eb9cbd083e8a2503c4e");
    /* §2.3.2 through the word-level API: the state after setup and the final state */
    unhex(k0_31, key);
    unhex("000000090000004a00000000", nonce);
    ft_chacha20_init(st, key, 1, nonce);
    CHECK_EQ_INT(st[4], 0x03020100L);
    CHECK_EQ_INT(st[12], 1);
    CHECK_EQ_INT(st[13], 0x09000000L);
    CHECK_EQ_INT(st[14], 0x4a000000L);
    ft_chacha20_core(st, out);
    CHECK_EQ_INT(out[0], 0xe4e7f110L);
    CHECK_EQ_INT(out[15], 0x4e3c50a2L);
    /* A.1 #1 - #5 */
    check_block(zero32, "000000000000000000000000", 0,
                "76b8e0ada0f13d90405d6ae55386bd28bdd219b8a08ded1aa836efcc8b770dc7"
                "da41597c5157488d7724e03fb8d84a376a43b8f41518a11cc387b669b2ee6586");
    check_block(zero32, "000000000000000000000000", 1,
                "9f07e7be5551387a98ba977c732d080dcb0f29a048e3656912c6533e32ee7aed"
                "29b721769ce64e43d57133b074d839d531ed1f28510afb45ace10a1f4b794d6f");
    check_block("0000000000000000000000000000000000000000000000000000000000000001", "000000000000000000000000", 1,
                "3aeb5224ecf849929b9d828db1ced4dd832025e8018b8160b82284f3c949aa5a"
                "8eca00bbb4a73bdad192b5c42f73f2fd4e273644c8b36125a64addeb006c13a0");
    check_block("00ff000000000000000000000000000000000000000000000000000000000000", "000000000000000000000000", 2,
                "72d54dfbf12ec44b362692df94137f328fea8da73990265ec1bbbea1ae9af0ca"
                "13b25aa26cb4a648cb9b9d1be65b2c0924a66c54d545ec1b7374f4872e99f096");
    check_block(zero32, "000000000000000000000002", 0,
                "c2c64d378cd536374ae204b9ef933fcd1a8b2288b3dfa49672ab765b54ee27c7"
                "8a970e0e955c14f3a88e741b97c286f75f8fc299e8148362fa198a39531bed6d");
    /* §2.6.2 (Poly1305 key generation = block 0) */
    check_block("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f", "000000000001020304050607", 0,
                "8ad5a08b905f81cc815040274ab29471a833b637e3fd0da508dbb8e2fdd1a646");

    /* §2.4.2: encrypt the sunscreen text */
    unhex(k0_31, key);
    unhex("000000000000004a00000000", nonce);
    memcpy(pt, sunscreen, sizeof pt);
    unhex("6e2e359a2568f98041ba0728dd0d6981e97e7aec1d4360c20a27afccfd9fae0b"
          "f91b65c5524733ab8f593dabcd62b3571639d624e65152ab8f530c359f0861d8"
          "07ca0dbf500d6a6156a38e088a22b65e52bc514d16ccf806818ce91ab7793736"
          "5af90bbf74a35be6b40b8eedf2785e42874d",
          want);
    CHECK_EQ_INT(ft_chacha20_xor(key, 1, nonce, pt, ct, sizeof pt), FT_WIRE_OK);
    CHECK_MEM(ct, want, sizeof want);
    /* in place, and decrypting gives the plaintext back */
    CHECK_EQ_INT(ft_chacha20_xor(key, 1, nonce, ct, ct, sizeof ct), FT_WIRE_OK);
    CHECK_MEM(ct, pt, sizeof pt);

    /* keystream (in == NULL) of every length 0..300 equals the concatenated blocks */
    for (k = 0; k <= sizeof buf; k++) {
        memset(buf, 0xee, sizeof buf);
        CHECK_EQ_INT(ft_chacha20_xor(key, 7, nonce, NULL, buf, k), FT_WIRE_OK);
        for (i = 0; i < k; i += 64) {
            ft_chacha20_block(key, (uint32_t)(7 + i / 64), nonce, one);
            CHECK_MEM(buf + i, one, (k - i < 64) ? k - i : 64);
        }
        if (k < sizeof buf) {
            CHECK_EQ_INT(buf[k], 0xee); /* nothing written past len */
        }
    }

    /* the last block before the counter wraps is allowed, one more byte is refused */
    CHECK_EQ_INT(ft_chacha20_xor(key, 0xffffffffu, nonce, NULL, buf, 64), FT_WIRE_OK);
    CHECK_EQ_INT(ft_chacha20_xor(key, 0xffffffffu, nonce, NULL, buf, 65), FT_WIRE_ERR_ARG);
    CHECK_EQ_INT(ft_chacha20_xor(key, 0xfffffffeu, nonce, NULL, buf, 128), FT_WIRE_OK);
    CHECK_EQ_INT(ft_chacha20_xor(key, 0, nonce, NULL, NULL, 1), FT_WIRE_ERR_ARG);
    CHECK_EQ_INT(ft_chacha20_xor(key, 0, nonce, NULL, NULL, 0), FT_WIRE_OK);
    return check_report("test_chacha20");
}
