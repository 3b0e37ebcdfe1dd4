/*
 * ft_hkdf.c - HKDF-SHA256 (RFC 5869): extract = HMAC(salt, ikm), expand = T(i) = HMAC(prk,
 * T(i-1) | info | i). Built on the wire library's HMAC; every intermediate T is zeroized.
 */
#include "ft_crypto.h"

#include <string.h>

static const uint8_t k_empty[1] = {0};

void ft_hkdf_sha256_extract(const uint8_t *salt, size_t salt_len, const uint8_t *ikm, size_t ikm_len,
                            uint8_t prk[32])
{
    /* An absent salt is HashLen zero bytes; HMAC pads any key with zeros, so an empty key is that. */
    ft_hmac_sha256(salt_len > 0 ? salt : k_empty, salt_len, ikm_len > 0 ? ikm : k_empty, ikm_len, prk);
}

int ft_hkdf_sha256_expand(const uint8_t prk[32], const uint8_t *info, size_t info_len, uint8_t *okm,
                          size_t okm_len)
{
    ft_hmac_sha256_ctx ctx;
    uint8_t t[FT_SHA256_BYTES];
    uint8_t counter = 0;
    size_t done = 0, take;

    if (okm_len > FT_HKDF_SHA256_MAX_OKM || prk == NULL || (okm_len > 0 && okm == NULL) ||
        (info_len > 0 && info == NULL)) {
        return FT_WIRE_ERR_ARG;
    }
    while (done < okm_len) {
        counter++;
        ft_hmac_sha256_init(&ctx, prk, FT_SHA256_BYTES);
        if (counter > 1) {
            ft_hmac_sha256_update(&ctx, t, sizeof t);
        }
        ft_hmac_sha256_update(&ctx, info_len > 0 ? info : k_empty, info_len);
        ft_hmac_sha256_update(&ctx, &counter, 1);
        ft_hmac_sha256_finish(&ctx, t);
        take = okm_len - done < sizeof t ? okm_len - done : sizeof t;
        memcpy(okm + done, t, take);
        done += take;
    }
    ft_zeroize(t, sizeof t);
    return FT_WIRE_OK;
}

int ft_hkdf_sha256(const uint8_t *salt, size_t salt_len, const uint8_t *ikm, size_t ikm_len, const uint8_t *info,
                   size_t info_len, uint8_t *okm, size_t okm_len)
{
    uint8_t prk[FT_SHA256_BYTES];
    int st;
    if ((salt_len > 0 && salt == NULL) || (ikm_len > 0 && ikm == NULL)) {
        return FT_WIRE_ERR_ARG;
    }
    ft_hkdf_sha256_extract(salt, salt_len, ikm, ikm_len, prk);
    st = ft_hkdf_sha256_expand(prk, info, info_len, okm, okm_len);
    ft_zeroize(prk, sizeof prk);
    return st;
}
