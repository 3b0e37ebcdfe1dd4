/* fw_provision.c - reads the provisioning image (layout in fw_provision.h). */
#include "fw_provision.h"

#include <math.h>
#include <string.h>

static uint32_t le32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

int fw_provision_parse(const uint8_t *image, size_t size, fw_config *cfg) {
    uint32_t total, key_len, n, features, u;
    size_t need;
    float scale;
    if (image == NULL || cfg == NULL || ((uintptr_t)image & 3u) != 0 || size < FW_PROVISION_HEADER_BYTES + 4u ||
        le32(image) != FW_PROVISION_MAGIC)
        return FT_WIRE_ERR_ARG;
    total = le32(image + 4);
    key_len = le32(image + 12);
    n = le32(image + 80);
    features = le32(image + 84);
    u = le32(image + 88);
    memcpy(&scale, &u, sizeof scale);
    if (total > size || n < 1u || n > FW_MAX_SAMPLES || features != FW_IN || key_len < FT_WIRE_MIN_KEY_BYTES ||
        key_len > FT_WIRE_MAX_KEY_BYTES || !(scale > 0.0f) || !isfinite(scale))
        return FT_WIRE_ERR_ARG;
    /* n <= FW_MAX_SAMPLES: no overflow */
    need = FW_PROVISION_HEADER_BYTES + 4u * (size_t)n + (((size_t)n * FW_IN + 3u) & ~(size_t)3u) + 4u;
    if (total != need || ft_crc32(0, image, total - 4u) != le32(image + total - 4u))
        return FT_WIRE_ERR_ARG;
    for (u = 0; u < n; u++)
        if (le32(image + FW_PROVISION_HEADER_BYTES + 4u * u) >= FW_OUT)
            return FT_WIRE_ERR_ARG;
    cfg->device_id = le32(image + 8);
    cfg->key = image + 16;
    cfg->key_len = key_len;
    cfg->n_samples = (int32_t)n;
    cfg->x_scale = scale;
    cfg->y = (const int32_t *)(const void *)(image + FW_PROVISION_HEADER_BYTES);
    cfg->x = image + FW_PROVISION_HEADER_BYTES + 4u * (size_t)n;
    return 0;
}
