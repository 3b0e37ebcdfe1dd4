/*
 * fw_secagg.c - the device side of SecAgg+ (fw_secagg.h): what fedtiny/privacy/secagg.py's Device
 * and fedtiny/privacy/grid.py's encode compute, written for a microcontroller. Every derived
 * byte follows the Python definitions (docs/secagg.md), checked byte for byte by
 * tests/test_fw_secagg.py; the grid and the masks follow csrc/secagg.c's encode_body (same float32
 * operations, same ChaCha20 streams), which the firmware cannot link (it dispatches to SIMD).
 */
#include "fw_secagg.h"

#if FW_SECAGG

#include <float.h>
#include <math.h>
#include <string.h>

static const uint8_t k_protocol[] = "fedtiny/secagg/v1/";
#define PROTOCOL_LEN (sizeof k_protocol - 1u)
#define MASK_NONCE "fedtiny-mask"  /* csrc/fedtiny.h FT_SECAGG_MASK_NONCE */
#define ROUND_NONCE "fedtiny-srnd" /* csrc/fedtiny.h FT_SECAGG_ROUND_NONCE */
#define CHUNK 32u                  /* elements per encode pass: 128 bytes of rounding stream */

static uint32_t get_u32(const uint8_t *p) { return FT_GET_U32_LE(p, 0); }
static uint16_t get_u16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static void put_u32(uint8_t *p, uint32_t v) { FT_PUT_U32_LE(v, p, 0); }

/* ---- seeds (fedtiny/seeds.py: numpy SeedSequence's word hash) -------------------------------- */
#define INIT_A 0x43B0D7E5u
#define MULT_A 0x931E8875u
#define INIT_B 0x8B51F9DDu
#define MULT_B 0x58F38DEDu
#define MIX_L 0xCA01F9DDu
#define MIX_R 0x4973F715u

static uint32_t hashmix(uint32_t v, uint32_t *h) {
    v ^= *h;
    *h *= MULT_A;
    v *= *h;
    return v ^ (v >> 16);
}
static uint32_t mix(uint32_t x, uint32_t y) {
    uint32_t r = MIX_L * x - MIX_R * y;
    return r ^ (r >> 16);
}

uint32_t fw_derive_seed(const uint32_t *parts, size_t n) {
    uint32_t pool[4], h = INIT_A, v;
    size_t i, s, d;
    for (i = 0; i < 4; i++)
        pool[i] = hashmix(i < n ? parts[i] : 0u, &h);
    for (s = 0; s < 4; s++)
        for (d = 0; d < 4; d++)
            if (s != d)
                pool[d] = mix(pool[d], hashmix(pool[s], &h));
    for (s = 4; s < n; s++)
        for (d = 0; d < 4; d++)
            pool[d] = mix(pool[d], hashmix(parts[s], &h));
    v = pool[0] ^ INIT_B;
    v *= INIT_B * MULT_B;
    return (v ^ (v >> 16)) & 0x7FFFFFFFu;
}

void fw_secagg_round_key(uint32_t seed, uint32_t round, uint32_t device, uint8_t out[32]) {
    uint32_t parts[5];
    uint32_t i;
    parts[0] = seed;
    parts[1] = round;
    parts[2] = device;
    parts[3] = 3u;
    for (i = 0; i < 8; i++) {
        parts[4] = i;
        put_u32(out + 4u * i, fw_derive_seed(parts, 5));
    }
}

/* ---- key derivation (secagg.py _info, _hkdf, commitment) -------------------------------------- */

/* PROTOCOL "/" purpose session round(u64) ids(u32...): at most 18 + 5 + 16 + 8 + 8 bytes. */
static size_t info(const fw_secagg *sa, const char *purpose, uint32_t a, uint32_t b, int n_ids, uint8_t out[64]) {
    size_t n = 0, p = strlen(purpose);
    memcpy(out, k_protocol, PROTOCOL_LEN);
    n += PROTOCOL_LEN;
    memcpy(out + n, purpose, p);
    n += p;
    memcpy(out + n, sa->session, 16);
    n += 16;
    put_u32(out + n, sa->round);
    put_u32(out + n + 4, 0u);
    n += 8;
    put_u32(out + n, a);
    n += 4;
    if (n_ids == 2) {
        put_u32(out + n, b);
        n += 4;
    }
    return n;
}

static int hkdf(const fw_secagg *sa, const uint8_t secret[32], const char *purpose, uint32_t a, uint32_t b,
                uint8_t out[32]) {
    uint8_t inf[64];
    size_t n = info(sa, purpose, a, b, 2, inf);
    return ft_hkdf_sha256(NULL, 0, secret, 32, inf, n, out, 32) == FT_WIRE_OK ? FW_SA_OK : FW_SA_ARG;
}

static void commitment(const fw_secagg *sa, const uint8_t b[32], uint8_t out[32]) {
    ft_sha256_ctx c;
    uint8_t inf[64];
    size_t n = info(sa, "self", sa->id, 0, 1, inf);
    ft_sha256_init(&c);
    ft_sha256_update(&c, inf, n);
    ft_sha256_update(&c, b, 32);
    ft_sha256_finish(&c, out);
}

/* ---- the graph (secagg.py neighbours) --------------------------------------------------------- */

static void ring_digest(const fw_secagg *sa, uint32_t d, uint8_t out[32]) {
    uint8_t buf[20];
    memcpy(buf, sa->graph_seed, 16);
    put_u32(buf + 16, d);
    ft_sha256(buf, sizeof buf, out);
}

/* Position of device index i on the ring: the number of devices whose digest sorts before its own. */
static uint16_t ring_pos(const fw_secagg *sa, uint16_t i) {
    uint8_t di[32], dj[32];
    uint16_t j, pos = 0;
    ring_digest(sa, sa->devices[i], di);
    for (j = 0; j < sa->n; j++) {
        if (j == i)
            continue;
        ring_digest(sa, sa->devices[j], dj);
        if (memcmp(dj, di, 32) < 0)
            pos++;
    }
    return pos;
}

/* The neighbours of device u (sorted) into out; returns how many (k), 0 if u is not in the round. */
static uint16_t neighbours_of(const fw_secagg *sa, uint32_t u, uint32_t *out) {
    uint16_t i, iu = 0xFFFFu, cnt = 0;
    for (i = 0; i < sa->n; i++)
        if (sa->devices[i] == u)
            iu = i;
    if (iu == 0xFFFFu)
        return 0;
    if (sa->k >= sa->n - 1u) {
        for (i = 0; i < sa->n; i++)
            if (i != iu)
                out[cnt++] = sa->devices[i];
        return cnt;
    } else {
        const uint16_t pu = ring_pos(sa, iu), half = (uint16_t)(sa->k / 2u);
        for (i = 0; i < sa->n; i++) { /* devices are sorted, so out is too */
            uint16_t pi, dist;
            if (i == iu)
                continue;
            pi = ring_pos(sa, i);
            dist = (uint16_t)((pi + sa->n - pu) % sa->n);
            if (dist <= half || dist >= sa->n - half)
                out[cnt++] = sa->devices[i];
        }
        return cnt;
    }
}

static int nbr_index(const fw_secagg *sa, uint32_t v) {
    int i;
    for (i = 0; i < (int)sa->k; i++)
        if (sa->nbrs[i] == v)
            return i;
    return -1;
}

/* ---- stages ------------------------------------------------------------------------------------ */

void fw_secagg_init(fw_secagg *sa, uint32_t device_id, fw_sa_random_fn random, void *random_ctx) {
    memset(sa, 0, sizeof *sa);
    sa->id = device_id;
    sa->random = random;
    sa->random_ctx = random_ctx;
}

void fw_secagg_clear(fw_secagg *sa) {
    uint32_t id = sa->id;
    fw_sa_random_fn r = sa->random;
    void *ctx = sa->random_ctx;
    ft_zeroize(sa, sizeof *sa);
    fw_secagg_init(sa, id, r, ctx);
}

static int fail(fw_secagg *sa, int status) {
    fw_secagg_clear(sa);
    return status;
}

int fw_secagg_setup(fw_secagg *sa, uint32_t round, const uint8_t *pl, size_t len, uint8_t out[FW_SA_KEYS_OUT]) {
    uint16_t i, n, k, t, m;
    uint8_t bits;
    double clip;
    uint64_t clip_bits = 0;
    int selected = 0;
    uint32_t lim;
    if (sa->stage != FW_SA_IDLE)
        return FW_SA_WRONG_STAGE;
    if (len < 56u || (len - 56u) % 4u != 0)
        return FW_SA_BAD_PAYLOAD;
    n = get_u16(pl + 32);
    k = get_u16(pl + 34);
    t = get_u16(pl + 36);
    m = get_u16(pl + 38);
    bits = pl[40];
    for (i = 0; i < 8; i++)
        clip_bits |= (uint64_t)pl[48 + i] << (8 * i);
    memcpy(&clip, &clip_bits, sizeof clip);
    if ((len - 56u) / 4u != n)
        return FW_SA_BAD_PAYLOAD;
    if (n > FW_SA_MAX_DEVICES)
        return FW_SA_TOO_BIG;
    for (i = 0; i < n; i++) {
        uint32_t d = get_u32(pl + 56 + 4u * i);
        if (i > 0 && d <= sa->devices[i - 1])
            return fail(sa, FW_SA_BAD_PAYLOAD);
        sa->devices[i] = d;
        selected |= d == sa->id;
    }
    if (pl[41] != 0) /* dp_bits (docs/PROTOCOL.md): a noise-free vector would break the round's DP */
        return fail(sa, FW_SA_NO_DP);
    if (!(clip > 0.0) || !isfinite(clip) || (bits != 16 && bits != 32) || n < 2)
        return fail(sa, FW_SA_BAD_SETUP); /* parse_setup's Grid check: a bad payload in Python */
    lim = bits == 16 ? 32767u : 0x7FFFFFFFu;
    if (lim / n < 1u)
        return fail(sa, FW_SA_BAD_SETUP);
    if (!selected)
        return fail(sa, FW_SA_NOT_SELECTED);
    /* secagg.Config.for_round */
    if (k < 1 || k > n - 1u || (k != n - 1u && k % 2u) || k > 255u || t < 1 || t > k || m > n ||
        m < (t > 2 ? t : 2))
        return fail(sa, FW_SA_BAD_SETUP);
    if (k > FW_SA_MAX_NBRS)
        return fail(sa, FW_SA_TOO_BIG);
    memcpy(sa->session, pl, 16);
    memcpy(sa->graph_seed, pl + 16, 16);
    sa->round = round;
    sa->n = n;
    sa->k = k;
    sa->t = t;
    sa->m = m;
    sa->bits = bits;
    sa->clip = clip;
    sa->qmax = lim / n < (1u << 24) ? lim / n : (1u << 24);
    if (neighbours_of(sa, sa->id, sa->nbrs) != k)
        return fail(sa, FW_SA_BAD_SETUP);
    /* the order of draws is secagg.Device's: b only (the key pairs come from the same source) */
    if (sa->random(sa->random_ctx, sa->c_sk, FW_SA_KEY) || sa->random(sa->random_ctx, sa->s_sk, FW_SA_KEY) ||
        sa->random(sa->random_ctx, sa->b, FW_SA_KEY))
        return fail(sa, FW_SA_NO_RANDOM);
    ft_x25519_public(sa->c_pk, sa->c_sk);
    ft_x25519_public(sa->s_pk, sa->s_sk);
    memcpy(out, sa->c_pk, 32);
    memcpy(out + 32, sa->s_pk, 32);
    commitment(sa, sa->b, out + 64);
    sa->stage = FW_SA_KEYS_SENT;
    return FW_SA_OK;
}

/* x of holder's shares of owner's secrets: 1 + holder's rank among owner's neighbours. */
static uint8_t share_x(const fw_secagg *sa, uint32_t owner, uint32_t holder) {
    uint32_t nb[FW_SA_MAX_DEVICES];
    uint16_t c = neighbours_of(sa, owner, nb), i;
    for (i = 0; i < c; i++)
        if (nb[i] == holder)
            return (uint8_t)(i + 1u);
    return 0;
}

int fw_secagg_key_list(fw_secagg *sa, const uint8_t *pl, size_t len, uint8_t *out, size_t cap, size_t *out_len) {
    /* both Shamir splits at once would need 2 * k * 33 bytes: the shares are made one secret at a
     * time into this buffer, with the coefficients drawn in secagg.Device's order (b's, then s's) */
    uint8_t sh_b[FW_SA_MAX_NBRS * 33u], sh_s[FW_SA_MAX_NBRS * 33u], rnd[(FW_SA_MAX_NBRS - 1u) * 32u];
    uint8_t plain[FW_SA_SHARE_PLAIN], key[32], aad[64];
    size_t n_entries, e, j, w = 0, need;
    int st = FW_SA_OK, idx;
    if (sa->stage != FW_SA_KEYS_SENT)
        return FW_SA_WRONG_STAGE;
    if (len % 100u)
        return fail(sa, FW_SA_BAD_PAYLOAD);
    n_entries = len / 100u;
    for (e = 0; e < n_entries; e++) {
        const uint8_t *r = pl + 100u * e;
        if (e > 0 && get_u32(r) <= get_u32(r - 100))
            return fail(sa, FW_SA_BAD_PAYLOAD);
        if (nbr_index(sa, get_u32(r)) < 0)
            return fail(sa, FW_SA_BAD_KEY);
    }
    if (n_entries < sa->t)
        return fail(sa, FW_SA_TOO_FEW_NEIGHBOURS);
    for (e = 0; e < n_entries; e++) /* every announced public key distinct, none of them mine */
        for (j = 0; j < 2; j++) {
            const uint8_t *pk = pl + 100u * e + 4u + 32u * j;
            size_t f, q;
            if (ft_ct_equal(pk, sa->c_pk, 32) || ft_ct_equal(pk, sa->s_pk, 32))
                return fail(sa, FW_SA_BAD_KEY);
            for (f = 0; f < n_entries; f++)
                for (q = 0; q < 2; q++)
                    if ((f != e || q != j) && ft_ct_equal(pk, pl + 100u * f + 4u + 32u * q, 32))
                        return fail(sa, FW_SA_BAD_KEY);
        }
    if (cap < n_entries * (4u + FW_SA_SHARE_CIPHER))
        return fail(sa, FW_SA_ARG);
    need = (size_t)(sa->t - 1u) * 32u;
    if ((need && sa->random(sa->random_ctx, rnd, need)) ||
        ft_shamir_split(sa->b, 32, (uint8_t)sa->k, (uint8_t)sa->t, need ? rnd : NULL, sh_b) != FT_WIRE_OK ||
        (need && sa->random(sa->random_ctx, rnd, need)) ||
        ft_shamir_split(sa->s_sk, 32, (uint8_t)sa->k, (uint8_t)sa->t, need ? rnd : NULL, sh_s) != FT_WIRE_OK)
        st = FW_SA_NO_RANDOM;
    for (e = 0; e < n_entries && st == FW_SA_OK; e++) {
        const uint8_t *r = pl + 100u * e;
        const uint32_t v = get_u32(r);
        const uint8_t x = share_x(sa, sa->id, v); /* == idx + 1: nbrs are this device's neighbours */
        idx = nbr_index(sa, v);
        if (ft_x25519(sa->c_shared[idx], sa->c_sk, r + 4) != FT_WIRE_OK) {
            st = FW_SA_BAD_KEY;
            break;
        }
        memcpy(sa->peer_s_pk[idx], r + 36, 32);
        sa->has_key[idx] = 1;
        put_u32(plain, sa->id);
        put_u32(plain + 4, v);
        plain[8] = x;
        memcpy(plain + 9, sh_b + 33u * (x - 1u) + 1u, 32);
        memcpy(plain + 41, sh_s + 33u * (x - 1u) + 1u, 32);
        {
            static const uint8_t zero_nonce[12] = {0};
            size_t an = info(sa, "aad", sa->id, v, 2, aad);
            uint8_t *o = out + w;
            if (hkdf(sa, sa->c_shared[idx], "share", sa->id, v, key) != FW_SA_OK ||
                ft_aead_chacha20poly1305_encrypt(key, zero_nonce, aad, an, plain, sizeof plain, o + 4,
                                                 o + 4 + FW_SA_SHARE_PLAIN) != FT_WIRE_OK) {
                st = FW_SA_ARG;
                break;
            }
            put_u32(o, v);
            w += 4u + FW_SA_SHARE_CIPHER;
        }
    }
    ft_zeroize(sh_b, sizeof sh_b);
    ft_zeroize(sh_s, sizeof sh_s);
    ft_zeroize(rnd, sizeof rnd);
    ft_zeroize(plain, sizeof plain);
    ft_zeroize(key, sizeof key);
    if (st != FW_SA_OK)
        return fail(sa, st);
    *out_len = w;
    sa->stage = FW_SA_SHARES_SENT;
    return FW_SA_OK;
}

int fw_secagg_share_list(fw_secagg *sa, const uint8_t *pl, size_t len) {
    static const uint8_t zero_nonce[12] = {0};
    uint8_t key[32], aad[64], plain[FW_SA_SHARE_PLAIN], secret[32];
    size_t n_entries, e;
    int idx, st = FW_SA_OK;
    if (sa->stage != FW_SA_SHARES_SENT)
        return FW_SA_WRONG_STAGE;
    if (len % (4u + FW_SA_SHARE_CIPHER))
        return fail(sa, FW_SA_BAD_PAYLOAD);
    n_entries = len / (4u + FW_SA_SHARE_CIPHER);
    for (e = 0; e < n_entries; e++) {
        const uint8_t *r = pl + (4u + FW_SA_SHARE_CIPHER) * e;
        const uint32_t u = get_u32(r);
        if (e > 0 && u <= get_u32(r - (4u + FW_SA_SHARE_CIPHER)))
            return fail(sa, FW_SA_BAD_PAYLOAD);
        idx = nbr_index(sa, u);
        if (idx < 0 || !sa->has_key[idx])
            return fail(sa, FW_SA_BAD_KEY);
    }
    memcpy(sa->seeds, sa->b, 32);
    sa->signs[0] = 1;
    sa->n_masks = 1;
    for (e = 0; e < n_entries; e++) {
        const uint8_t *r = pl + (4u + FW_SA_SHARE_CIPHER) * e;
        const uint32_t u = get_u32(r);
        size_t an = info(sa, "aad", u, sa->id, 2, aad);
        idx = nbr_index(sa, u);
        if (hkdf(sa, sa->c_shared[idx], "share", u, sa->id, key) == FW_SA_OK &&
            ft_aead_chacha20poly1305_decrypt(key, zero_nonce, aad, an, r + 4, FW_SA_SHARE_PLAIN,
                                             r + 4 + FW_SA_SHARE_PLAIN, plain) == FT_WIRE_OK &&
            get_u32(plain) == u && get_u32(plain + 4) == sa->id && plain[8] == share_x(sa, u, sa->id)) {
            sa->held[idx] = 1;
            sa->held_x[idx] = plain[8];
            memcpy(sa->held_b[idx], plain + 9, 32);
            memcpy(sa->held_s[idx], plain + 41, 32);
        } else {
            sa->share_undecryptable++;
        }
        /* the pairwise seed with every sender, whether or not its share decrypted */
        if (ft_x25519(secret, sa->s_sk, sa->peer_s_pk[idx]) != FT_WIRE_OK ||
            hkdf(sa, secret, "mask", u < sa->id ? u : sa->id, u < sa->id ? sa->id : u,
                 sa->seeds + 32u * sa->n_masks) != FW_SA_OK) {
            st = FW_SA_BAD_KEY;
            break;
        }
        sa->signs[sa->n_masks] = (int8_t)(sa->id < u ? 1 : -1);
        sa->n_masks++;
    }
    ft_zeroize(key, sizeof key);
    ft_zeroize(plain, sizeof plain);
    ft_zeroize(secret, sizeof secret);
    if (st != FW_SA_OK)
        return fail(sa, st);
    sa->stage = FW_SA_SHARE_LIST;
    return FW_SA_OK;
}

/* ---- the grid and the masks (csrc/secagg.c encode_body, element by element) ------------------- */

/* sum x[i]^2 in float64, 16 lanes added pairwise: csrc/secagg.c ft_l2sq_f32_ref's order. */
static double l2sq(const float *x, size_t n) {
    double lane[16] = {0};
    size_t i;
    int w, j;
    for (i = 0; i < n; i++)
        lane[i % 16u] += (double)x[i] * (double)x[i];
    for (w = 8; w >= 1; w /= 2)
        for (j = 0; j < w; j++)
            lane[j] += lane[j + w];
    return lane[0];
}

int fw_secagg_prepare(fw_secagg *sa, const float *delta, size_t n) {
    double norm;
    if (sa->stage != FW_SA_SHARE_LIST && sa->stage != FW_SA_SHARES_SENT)
        return FW_SA_WRONG_STAGE;
    norm = sqrt(l2sq(delta, n));
    if (!isfinite(norm))
        return FW_SA_NONFINITE;
    sa->scale = norm <= sa->clip ? 1.0f : (float)(sa->clip / norm);
    return FW_SA_OK;
}

/* Word `i` (w bytes) of the stream (key, nonce), from a one-block cache. */
static uint32_t stream_word(const uint8_t key[32], const char *nonce, uint64_t i, unsigned w, uint8_t blk[64],
                            uint32_t *cached) {
    const uint64_t p = i * w;
    const uint32_t b = (uint32_t)(p / 64u);
    const unsigned o = (unsigned)(p % 64u);
    if (*cached != b + 1u) {
        ft_chacha20_block(key, b, (const uint8_t *)nonce, blk);
        *cached = b + 1u;
    }
    return w == 2 ? (uint32_t)get_u16(blk + o) : get_u32(blk + o);
}

int fw_secagg_encode(const fw_secagg *sa, const float *delta, size_t first, size_t count,
                     const uint8_t round_key[32], uint8_t *out) {
    const unsigned w = sa->bits / 8u;
    const float step = (float)(sa->clip / (double)sa->qmax), fq = (float)sa->qmax;
    float m;
    uint32_t acc[CHUNK], cached;
    uint8_t blk[64];
    size_t i0, i, j;
    if (sa->stage != FW_SA_SHARE_LIST)
        return FW_SA_WRONG_STAGE;
    m = sa->scale / step;
    for (i0 = 0; i0 < count; i0 += CHUNK) {
        const size_t len = count - i0 < CHUNK ? count - i0 : CHUNK;
        cached = 0;
        for (i = 0; i < len; i++) {
            float t = delta[first + i0 + i] * m;
            int32_t fl;
            float frac, u;
            if (!(fabsf(t) <= FLT_MAX)) {
                ft_zeroize(acc, sizeof acc);
                ft_zeroize(blk, sizeof blk);
                return FW_SA_NONFINITE;
            }
            t = t >= -fq ? t : -fq;
            t = t <= fq ? t : fq;
            fl = (int32_t)t;
            fl -= (float)fl > t;
            frac = t - (float)fl;
            u = (float)(stream_word(round_key, ROUND_NONCE, first + i0 + i, 4, blk, &cached) >> 8) * 0x1p-24f;
            acc[i] = (uint32_t)fl + (uint32_t)(u < frac);
        }
        for (j = 0; j < sa->n_masks; j++) {
            cached = 0;
            for (i = 0; i < len; i++) {
                const uint32_t mk = stream_word(sa->seeds + 32u * j, MASK_NONCE, first + i0 + i, w, blk, &cached);
                acc[i] = sa->signs[j] > 0 ? acc[i] + mk : acc[i] - mk;
            }
        }
        for (i = 0; i < len; i++) {
            uint8_t *o = out + w * (i0 + i);
            o[0] = (uint8_t)acc[i];
            o[1] = (uint8_t)(acc[i] >> 8);
            if (w == 4) {
                o[2] = (uint8_t)(acc[i] >> 16);
                o[3] = (uint8_t)(acc[i] >> 24);
            }
        }
    }
    ft_zeroize(acc, sizeof acc);
    ft_zeroize(blk, sizeof blk);
    return FW_SA_OK;
}

/* ---- unmask (secagg.Device.on_unmask) ---------------------------------------------------------- */

int fw_secagg_unmask(fw_secagg *sa, const uint8_t *pl, size_t len, uint8_t *out, size_t cap, size_t *out_len) {
    const uint32_t crc = ft_crc32(0, pl, len);
    size_t n, e, w = 0;
    uint32_t i;
    int me = 0;
    if (sa->stage == FW_SA_UNMASKED)
        return crc == sa->survivors_crc ? FW_SA_AGAIN : fail(sa, FW_SA_CONFLICTING_UNMASK);
    if (sa->stage != FW_SA_SHARE_LIST) /* (the vector went out: the caller encoded it) */
        return FW_SA_WRONG_STAGE;
    if (len % 4u)
        return fail(sa, FW_SA_BAD_PAYLOAD);
    n = len / 4u;
    for (e = 0; e < n; e++) {
        const uint32_t d = get_u32(pl + 4u * e);
        int known = 0;
        if (e > 0 && d <= get_u32(pl + 4u * (e - 1u)))
            return fail(sa, FW_SA_BAD_PAYLOAD);
        for (i = 0; i < sa->n; i++)
            known |= sa->devices[i] == d;
        if (!known)
            return fail(sa, FW_SA_INCONSISTENT_SURVIVORS);
        me |= d == sa->id;
    }
    if (!me)
        return fail(sa, FW_SA_INCONSISTENT_SURVIVORS);
    if (n < sa->m)
        return fail(sa, FW_SA_TOO_FEW_SURVIVORS);
    if (cap < (size_t)sa->k * 38u)
        return fail(sa, FW_SA_ARG);
    for (i = 0; i < sa->k; i++) { /* nbrs are sorted: the entries come out sorted by owner */
        int alive = 0;
        if (!sa->held[i])
            continue;
        for (e = 0; e < n; e++)
            alive |= get_u32(pl + 4u * e) == sa->nbrs[i];
        put_u32(out + w, sa->nbrs[i]);
        out[w + 4] = (uint8_t)(alive ? 0 : 1);
        out[w + 5] = sa->held_x[i];
        memcpy(out + w + 6, alive ? sa->held_b[i] : sa->held_s[i], 32);
        w += 38u;
    }
    *out_len = w;
    sa->survivors_crc = crc;
    sa->stage = FW_SA_UNMASKED;
    /* never both kinds for one owner: the shares not revealed are wiped now */
    ft_zeroize(sa->held_b, sizeof sa->held_b);
    ft_zeroize(sa->held_s, sizeof sa->held_s);
    ft_zeroize(sa->seeds, sizeof sa->seeds);
    ft_zeroize(sa->c_sk, sizeof sa->c_sk);
    ft_zeroize(sa->s_sk, sizeof sa->s_sk);
    ft_zeroize(sa->b, sizeof sa->b);
    return FW_SA_OK;
}

/* ---- the link (fw_secagg.h) ---------------------------------------------------------------------- */

void fw_sa_link_init(fw_sa_link *l, uint32_t device_id, fw_sa_random_fn random, void *random_ctx,
                     fw_sa_send_fn send, void *send_ctx) {
    memset(l, 0, sizeof *l);
    fw_secagg_init(&l->m, device_id, random, random_ctx);
    l->send = send;
    l->send_ctx = send_ctx;
}

static void send_list(fw_sa_link *l, uint8_t type, const uint8_t *data, size_t len, size_t entry) {
    const size_t per = (FW_SA_CHUNK / entry) * entry;
    const uint16_t count = (uint16_t)(len == 0 ? 1u : (len + per - 1u) / per);
    uint16_t i;
    for (i = 0; i < count; i++) {
        const size_t off = (size_t)i * per;
        l->send(l->send_ctx, type, l->round, data + off, len - off < per ? len - off : per, i, count);
    }
}

static void send_vector_chunk(fw_sa_link *l, uint16_t i) {
    const size_t w = l->m.bits / 8u, per = FW_SA_CHUNK / w, first = (size_t)i * per;
    const size_t count = l->n - first < per ? l->n - first : per;
    if (fw_secagg_encode(&l->m, l->delta, first, count, l->round_key, l->chunk) == FW_SA_OK)
        l->send(l->send_ctx, FT_MSG_MASKED_UPDATE, l->round, l->chunk, count * w, i, l->n_chunks);
    ft_zeroize(l->chunk, sizeof l->chunk);
}

static void start_upload(fw_sa_link *l, uint32_t now) {
    uint16_t i;
    int st;
    if (l->uploading || l->uploaded || l->delta == NULL || l->m.stage != FW_SA_SHARE_LIST)
        return;
    st = fw_secagg_prepare(&l->m, l->delta, l->n);
    if (st != FW_SA_OK) {
        l->status = st;
        fw_secagg_clear(&l->m);
        return;
    }
    l->n_chunks = (uint16_t)((l->n * (l->m.bits / 8u) + FW_SA_CHUNK - 1u) / FW_SA_CHUNK);
    l->uploading = 1;
    for (i = 0; i < l->n_chunks; i++)
        send_vector_chunk(l, i);
    l->last_send_ms = now;
}

int fw_sa_link_delta(fw_sa_link *l, uint32_t round, const float *delta, size_t n, uint32_t seed, uint32_t now_ms) {
    const size_t max_chunks = 32u; /* the ACK bitmap kept here */
    if (round != l->round || l->status != 0 || l->m.stage == FW_SA_IDLE)
        return FW_SA_WRONG_STAGE;  /* no SETUP for this round reached the device: it sits the round out */
    if (n == 0 || (n * 4u + FW_SA_CHUNK - 1u) / FW_SA_CHUNK > max_chunks)
        return FW_SA_ARG;
    l->delta = delta;
    l->n = n;
    fw_secagg_round_key(seed, round, l->m.id, l->round_key);
    start_upload(l, now_ms);
    return FW_SA_OK;
}

static void on_vector_ack(fw_sa_link *l, const uint8_t *pl, size_t len, uint32_t now) {
    uint8_t type;
    uint16_t first, n_bits, i;
    const uint8_t *bitmap;
    uint32_t got = 0;
    if (!l->uploading)
        return; /* an ACK after the upload completed: nothing to do */
    if (ft_ack_parse(pl, len, &type, &first, &n_bits, &bitmap) != FT_WIRE_OK || first != 0 || n_bits != l->n_chunks) {
        l->dropped++;
        return;
    }
    for (i = 0; i < n_bits; i++)
        if ((bitmap[i / 8u] >> (i % 8u)) & 1u)
            got |= 1u << i;
    if (got == (l->n_chunks == 32u ? 0xFFFFFFFFu : (1u << l->n_chunks) - 1u)) {
        l->uploaded = 1;
        l->uploading = 0;
        l->acked = got;
        return;
    }
    if (got == l->acked && now - l->last_send_ms < FW_SA_RESEND_MS)
        return; /* no news: the chunks in flight may still arrive */
    l->acked = got;
    for (i = 0; i < l->n_chunks; i++)
        if (!((got >> i) & 1u))
            send_vector_chunk(l, i);
    l->last_send_ms = now;
}

void fw_sa_link_poll(fw_sa_link *l, uint32_t now_ms) {
    uint16_t i;
    if (!l->uploading || now_ms - l->last_send_ms < FW_SA_RESEND_MS)
        return;
    for (i = 0; i < l->n_chunks; i++) /* the aggregator ACKs a chunk it already holds */
        if (!((l->acked >> i) & 1u)) {
            send_vector_chunk(l, i);
            break;
        }
    l->last_send_ms = now_ms;
}

int fw_sa_link_frame(fw_sa_link *l, const ft_wire_header *h, const uint8_t *pl, uint32_t now_ms) {
    const uint8_t t = h->type;
    const size_t len = h->payload_len;
    size_t n = 0;
    int st = FW_SA_OK, bit;
    if (t == FT_MSG_ACK && len > 0 && pl[0] == FT_MSG_MASKED_UPDATE) {
        if (h->round == l->round)
            on_vector_ack(l, pl, len, now_ms);
        else
            l->dropped++;
        return 1;
    }
    if (t < FT_MSG_SECAGG_SETUP || t > FT_MSG_SECAGG_UNMASK_SHARES)
        return 0;
    if (t == FT_MSG_SECAGG_SETUP && h->round != l->round) { /* a new round: a new machine */
        fw_secagg_clear(&l->m);
        l->round = h->round;
        l->status = 0;
        l->answered = 0;
        l->delta = NULL;
        l->uploading = l->uploaded = 0;
        l->acked = 0;
    }
    if (h->round != l->round || h->chunk_count != 1) {
        l->dropped++; /* another round, or a list longer than this firmware takes */
        return 1;
    }
    if (l->status != 0)
        return 1; /* out of this round */
    bit = 1 << (t - FT_MSG_SECAGG_SETUP);
    if (l->answered & bit) { /* the message again: our answer was lost */
        if (t == FT_MSG_SECAGG_SETUP)
            l->send(l->send_ctx, FT_MSG_SECAGG_KEYS, l->round, l->keys, sizeof l->keys, 0, 1);
        else if (t == FT_MSG_SECAGG_KEY_LIST)
            send_list(l, FT_MSG_SECAGG_SHARES, l->shares, l->shares_len, 4u + FW_SA_SHARE_CIPHER);
        else if (t == FT_MSG_SECAGG_UNMASK && fw_secagg_unmask(&l->m, pl, len, NULL, 0, &n) == FW_SA_AGAIN)
            send_list(l, FT_MSG_SECAGG_UNMASK_SHARES, l->unmask, l->unmask_len, 38u);
        return 1;
    }
    switch (t) {
    case FT_MSG_SECAGG_SETUP:
        if (l->m.random == NULL) {
            st = FW_SA_NO_RANDOM;
            break;
        }
        st = fw_secagg_setup(&l->m, h->round, pl, len, l->keys);
        if (st == FW_SA_OK)
            l->send(l->send_ctx, FT_MSG_SECAGG_KEYS, l->round, l->keys, sizeof l->keys, 0, 1);
        break;
    case FT_MSG_SECAGG_KEY_LIST:
        st = fw_secagg_key_list(&l->m, pl, len, l->shares, sizeof l->shares, &l->shares_len);
        if (st == FW_SA_OK)
            send_list(l, FT_MSG_SECAGG_SHARES, l->shares, l->shares_len, 4u + FW_SA_SHARE_CIPHER);
        break;
    case FT_MSG_SECAGG_SHARE_LIST:
        st = fw_secagg_share_list(&l->m, pl, len);
        if (st == FW_SA_OK)
            start_upload(l, now_ms);
        break;
    case FT_MSG_SECAGG_UNMASK:
        if (!l->uploading && !l->uploaded) {
            st = FW_SA_WRONG_STAGE; /* listed as a survivor, but its vector never went out */
            break;
        }
        st = fw_secagg_unmask(&l->m, pl, len, l->unmask, sizeof l->unmask, &l->unmask_len);
        if (st == FW_SA_OK) {
            l->uploading = 0;
            l->delta = NULL;
            send_list(l, FT_MSG_SECAGG_UNMASK_SHARES, l->unmask, l->unmask_len, 38u);
            l->answered = (uint8_t)(l->answered | bit);
            return 2;
        }
        break;
    default:
        return 1; /* a device's own message type coming back: ignored */
    }
    if (st == FW_SA_OK)
        l->answered = (uint8_t)(l->answered | bit);
    else if (st != FW_SA_WRONG_STAGE) {
        l->status = st; /* out of this round: the aggregator counts it as a dropout */
        fw_secagg_clear(&l->m);
    }
    return 1;
}

#endif /* FW_SECAGG */
