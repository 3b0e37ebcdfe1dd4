"""The example C firmware's host build on pseudo-terminals behind one real `fedtiny bridge`.

One place for what the bridge tests share: building the host firmware (firmware_bridge/example
plus csrc/), writing a device's provisioning image, and starting the bridge and the devices on
fresh pseudo-terminals (`SerialFleet`), closing everything however the test ends.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FW = os.path.join(ROOT, "firmware_bridge")
CSRC = os.path.join(ROOT, "csrc")

sys.path.insert(0, os.path.join(FW, "example"))
import provision  # noqa: E402  (firmware_bridge/example/provision.py)

# the host build's sources besides csrc/ (the secure-aggregation stage machine and its crypto included)
FW_EXAMPLE_SOURCES = ("fw_device.c", "fw_provision.c", "fw_secagg.c", "host_main.c")
FW_LIB_SOURCES = ("ft_sha256.c", "ft_cobs.c", "ft_frame.c", "ft_chacha20.c", "ft_hkdf.c", "ft_poly1305.c",
                  "ft_x25519.c", "ft_shamir.c")


def build_host_firmware(out_dir, *, secagg: bool = True) -> str:
    """Compile the example firmware for this machine (skips the test when there is no C compiler).
    secagg=False: the small part's image (FW_SECAGG=0; fw_secagg.c and the crypto it alone needs
    left out, as the board Makefile's SECAGG=0)."""
    cc = shutil.which(os.environ.get("CC", "gcc")) or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler to build the firmware's host version")
    out = os.path.join(str(out_dir), "fw_host")
    example, lib = FW_EXAMPLE_SOURCES, FW_LIB_SOURCES
    if not secagg:
        example = tuple(f for f in example if f != "fw_secagg.c")
        lib = tuple(f for f in lib if f not in ("ft_hkdf.c", "ft_poly1305.c", "ft_x25519.c", "ft_shamir.c"))
    sources = ([os.path.join(FW, "example", f) for f in example]
               + [os.path.join(FW, f) for f in lib]
               + sorted(os.path.join(d, f) for d in (CSRC, os.path.join(CSRC, "arch"))
                        for f in os.listdir(d) if f.endswith(".c")))
    cmd = [cc, "-std=c99", "-O2", "-ffp-contract=off", "-Wall", "-Wextra", "-Werror", f"-DFW_SECAGG={int(secagg)}",
           "-I", CSRC, "-I", FW,
           "-I", os.path.join(FW, "example"), *sources, "-lm", "-o", out]
    subprocess.run(cmd, check=True, timeout=120)
    return out


def write_device_data(npz_path: str, device_id: int, key: bytes, out: str) -> None:
    """The device's provisioning image (firmware_bridge/example/provision.py): id, key, uint8 data."""
    with np.load(npz_path) as z:
        blob = provision.image(device_id, key, z["x"], z["y"])
    with open(out, "wb") as f:
        f.write(blob)


class SerialFleet:
    """`fedtiny bridge --server SERVER` and one firmware process per device of `fleet` in `ids`,
    each on its own pseudo-terminal. `procs[0]` is the bridge, `procs[1:]` the devices in `ids`
    order (stdout and stderr piped as text). `device_args(k)` adds arguments to device k's
    command line; `bridge_args` to the bridge's."""

    def __init__(self, fleet, firmware: str, server: str, ids, rounds: int, timeout: float,
                 device_args=lambda k: [], bridge_args=()):
        self.ptys, self.procs = [], []
        try:
            self.ptys = [os.openpty() for _ in ids]
            bridge = [sys.executable, "-m", "fedtiny.cli", "bridge", "--server", server, *bridge_args]
            for _, slave in self.ptys:
                bridge += ["--serial", os.ttyname(slave)]
            self.procs.append(subprocess.Popen(bridge, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                               cwd=fleet.dir))
            for k, (master, _) in zip(ids, self.ptys):
                data = os.path.join(fleet.dir, f"device{k}.bin")
                write_device_data(fleet.data[k], k, fleet.keys[k], data)
                self.procs.append(subprocess.Popen(
                    [firmware, "--fd", str(master), "--provision", data, "--rounds", str(rounds),
                     "--timeout", str(timeout), *device_args(k)],
                    pass_fds=(master,), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        except BaseException:
            self.close()
            raise

    @property
    def bridge(self) -> subprocess.Popen:
        return self.procs[0]

    @property
    def devices(self) -> list[subprocess.Popen]:
        return self.procs[1:]

    def master(self, i: int) -> int:
        """The test's end of the i-th device's line (to write line noise on it)."""
        return self.ptys[i][0]

    def close(self) -> None:
        from netutil import stop_all
        stop_all(self.procs)
        for master, slave in self.ptys:
            os.close(master)
            os.close(slave)
        self.ptys = []

    def __enter__(self) -> "SerialFleet":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
