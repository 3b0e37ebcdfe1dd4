#!/usr/bin/env bash
# The Raspberry Pi OS 64-bit check (tests/platform/debian_arm.sh with FEDTINY_PI_ARCH=arm64).
FEDTINY_PI_ARCH=arm64 exec bash "$(dirname "$0")/debian_arm.sh" "$@"
