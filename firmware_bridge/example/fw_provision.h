/*
 * fw_provision.h - the provisioning image: one device's identity, key and local data set, kept
 * in flash apart from the firmware so one firmware build serves every device of a fleet
 * (firmware_bridge/example/provision.py writes it; a board maps it at an address of its own,
 * the host build reads it from a file).
 *
 * Layout (little-endian, 4-byte aligned):
 *   offset  0  uint32 magic FW_PROVISION_MAGIC ("FTP1")
 *           4  uint32 total bytes of the image, CRC included
 *           8  uint32 device id
 *          12  uint32 key length (16..64)
 *          16  uint8  key[64] (zero after key length)
 *          80  uint32 n samples (1..FW_MAX_SAMPLES)
 *          84  uint32 features per sample (64)
 *          88  float32 scale: a feature is pixel * scale
 *          92  uint32 reserved (0)
 *          96  int32  labels[n] (0..9)
 *     96 + 4n  uint8  pixels[n][64]
 *              zero padding to a multiple of 4
 *      end - 4 uint32 CRC-32 (ft_crc32) of every byte before it
 */
#ifndef FW_PROVISION_H
#define FW_PROVISION_H

#include <stddef.h>
#include <stdint.h>

#include "fw_device.h"

#define FW_PROVISION_MAGIC 0x31505446u
#define FW_PROVISION_HEADER_BYTES 96u

/* Fills device_id, key, key_len, x, x_scale, y, n_samples of cfg with pointers into image
 * (which must stay mapped and be 4-byte aligned). 0, or FT_WIRE_ERR_ARG if the image is
 * missing, truncated, corrupt (CRC) or out of range (a label outside 0..9); cfg is then untouched. */
int fw_provision_parse(const uint8_t *image, size_t size, fw_config *cfg);

#endif /* FW_PROVISION_H */
