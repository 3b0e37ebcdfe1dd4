"""The example C firmware (firmware_bridge/example, host build) joins through `fedtiny bridge`
over pseudo-terminals and completes rounds: the real device code, the real bridge process."""
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from fedtiny.net import state
from netutil import AggregatorThread, Fleet, stop_all

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FW = os.path.join(ROOT, "firmware_bridge")
CSRC = os.path.join(ROOT, "csrc")
pytest.importorskip("serial", reason="fedtiny bridge needs pyserial (pip install 'fedtiny[serial]')")


@pytest.fixture(scope="module")
def firmware(tmp_path_factory):
    cc = shutil.which(os.environ.get("CC", "gcc")) or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler to build the firmware's host version")
    out = str(tmp_path_factory.mktemp("fw") / "fw_host")
    sources = ([os.path.join(FW, "example", f) for f in ("fw_device.c", "host_main.c")]
               + [os.path.join(FW, f) for f in ("ft_sha256.c", "ft_cobs.c", "ft_frame.c")]
               + sorted(os.path.join(d, f) for d in (CSRC, os.path.join(CSRC, "arch"))
                        for f in os.listdir(d) if f.endswith(".c")))
    cmd = [cc, "-std=c99", "-O2", "-ffp-contract=off", "-Wall", "-Wextra", "-Werror", "-I", CSRC, "-I", FW,
           "-I", os.path.join(FW, "example"), *sources, "-lm", "-o", out]
    subprocess.run(cmd, check=True, timeout=120)
    return out


def write_device_data(npz_path: str, out: str) -> None:
    """The firmware's data file: int32 n, n x 64 float32, n int32 (little-endian)."""
    with np.load(npz_path) as z:
        x, y = z["x"].reshape(len(z["y"]), 64).astype("<f4"), z["y"].astype("<i4")
    with open(out, "wb") as f:
        f.write(np.int32(len(y)).astype("<i4").tobytes() + x.tobytes() + y.tobytes())


def test_c_firmware_through_bridge_over_pty(tmp_path, firmware):
    n_dev, rounds = 2, 3
    fleet = Fleet(tmp_path, n_dev)
    ptys = [os.openpty() for _ in range(n_dev)]
    procs = []
    try:
        with AggregatorThread(fleet.config(model="mlp:64-10", rounds=rounds, min_clients=n_dev, lr=0.1)) as at:
            bridge_cmd = [sys.executable, "-m", "fedtiny.cli", "bridge", "--server", at.server]
            for _, slave in ptys:
                bridge_cmd += ["--serial", os.ttyname(slave)]
            procs.append(subprocess.Popen(bridge_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                          cwd=fleet.dir))
            for k, (master, _) in enumerate(ptys):
                data = str(tmp_path / f"device{k}.bin")
                write_device_data(fleet.data[k], data)
                procs.append(subprocess.Popen(
                    [firmware, "--fd", str(master), "--id", str(k), "--key", fleet.keys[k].hex(), "--data", data,
                     "--rounds", str(rounds), "--timeout", "40"],
                    pass_fds=(master,), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
            at.wait(45)
            for p in procs[1:]:
                out, err = p.communicate(timeout=10)
                assert p.returncode == 0, out + err
                assert f"{rounds} round(s)" in out, out
        # line noise on a serial port: dropped and counted by the bridge, which stops cleanly
        os.write(ptys[0][0], b"\x00\x05noise, not a COBS frame\x00\x03\x01\x00")
        bridge = procs[0]
        time.sleep(0.5)
        bridge.terminate()
        _, err = bridge.communicate(timeout=10)
        assert bridge.returncode == 0, err
        last = err.strip().splitlines()[-1]
        assert last.startswith("bridge stopped:") and "serial_" in last and "'to_device'" in last, err
    finally:
        stop_all(procs)
        for master, slave in ptys:
            os.close(master)
            os.close(slave)
    ck = state.load(os.path.join(fleet.dir, "state"))
    assert ck.round == rounds
    assert [row["clients"] for row in ck.metrics] == [n_dev] * rounds
    assert all(set(row["rejected"]) <= {"replay", "duplicate_chunk"} for row in ck.metrics), ck.metrics
    # the C devices really trained: the dense head learns the digits (chance is 0.10)
    accs = [row["test_acc"] for row in ck.metrics]
    assert accs[-1] > 0.6 and accs[-1] > accs[0], accs


def test_firmware_links_for_cortex_m4(tmp_path):
    """The same firmware (no malloc, no stdio) links for a Cortex-M4 and fits a 64 KB-RAM part."""
    cc, size = shutil.which("arm-none-eabi-gcc"), shutil.which("arm-none-eabi-size")
    if cc is None or size is None:
        pytest.skip("no arm-none-eabi-gcc (apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi)")
    elf = str(tmp_path / "fw.elf")
    sources = ([os.path.join(FW, "example", f) for f in ("board_stub.c", "fw_device.c")]
               + [os.path.join(FW, f) for f in ("ft_sha256.c", "ft_cobs.c", "ft_frame.c")]
               + sorted(os.path.join(d, f) for d in (CSRC, os.path.join(CSRC, "arch"))
                        for f in os.listdir(d) if f.endswith(".c")))
    subprocess.run([cc, "-std=c99", "-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16", "-Os",
                    "-ffunction-sections", "-fdata-sections", "-Wall", "-Werror", "-I", CSRC, "-I", FW,
                    "-I", os.path.join(FW, "example"), *sources, "-Wl,--gc-sections", "--specs=nosys.specs", "-lm",
                    "-o", elf], check=True, timeout=120, capture_output=True)
    text, data, bss = map(int, subprocess.run([size, elf], capture_output=True, text=True,
                                               check=True).stdout.splitlines()[1].split()[:3])
    # the README's figure (`pytest tests/test_bridge.py -k cortex_m4 -s` prints it)
    print(f"\nfirmware for Cortex-M4: flash {text + data:,} B (text+data), RAM {data + bss:,} B (data+bss)")
    assert text + data <= 32 * 1024, (text, data)       # flash, newlib's startup included
    assert data + bss <= 48 * 1024, (data, bss)         # RAM: fw_device (39.7 KB) and the C library
