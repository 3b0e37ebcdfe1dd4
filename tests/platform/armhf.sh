#!/usr/bin/env bash
# The 32-bit Raspberry Pi OS check (tests/platform/debian_arm.sh with FEDTINY_PI_ARCH=armhf):
# Debian's python3-numpy in the root, cffi built by pip (libffi-dev), NEON found from HWCAP.
FEDTINY_PI_ARCH=armhf exec bash "$(dirname "$0")/debian_arm.sh" "$@"
