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
               + [os.path.join(FW, f) for f in ("ft_sha256.c", "ft_cobs.c", "ft_frame.c", "ft_chacha20.c")]
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
               + [os.path.join(FW, f) for f in ("ft_sha256.c", "ft_cobs.c", "ft_frame.c", "ft_chacha20.c")]
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


def test_firmware_arch_text_is_the_models():
    """The firmware hashes the same layer text as Model.arch_hash() for its mlp:64-10 head."""
    import re
    from fedtiny import model
    with open(os.path.join(FW, "example", "fw_device.c")) as f:
        src = f.read()
    text = re.search(r'k_arch_text\[\] = "(.*?)";', src).group(1).encode().decode("unicode_escape")
    assert text == model.build("mlp:64-10").arch_text()


def test_c_firmware_refuses_another_architecture(tmp_path, firmware):
    """An aggregator running mlp:64-32-10: the firmware (mlp:64-10) tells it, the aggregator stops
    selecting it, and fw_host exits 2 with one line."""
    from netutil import wait_for
    fleet = Fleet(tmp_path, 2)       # two shards: one fits the firmware's 1,024 samples
    master, slave = os.openpty()
    procs = []
    try:
        with AggregatorThread(fleet.config(model="mlp:64-32-10", rounds=1, min_clients=1, round_timeout=30)) as at:
            procs.append(subprocess.Popen([sys.executable, "-m", "fedtiny.cli", "bridge", "--server", at.server,
                                           "--serial", os.ttyname(slave)], stdout=subprocess.DEVNULL,
                                          stderr=subprocess.PIPE, text=True, cwd=fleet.dir))
            data = str(tmp_path / "device0.bin")
            write_device_data(fleet.data[0], data)
            fw = subprocess.Popen([firmware, "--fd", str(master), "--id", "0", "--key", fleet.keys[0].hex(),
                                   "--data", data, "--rounds", "1", "--timeout", "20"],
                                  pass_fds=(master,), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            procs.append(fw)
            out, err = fw.communicate(timeout=30)
            assert fw.returncode == 2, out + err
            assert err.strip().splitlines() == [
                "fw_host: device 0: the aggregator's model is not mlp:64-10 (650 parameters), the one this firmware "
                "trains: run the aggregator with --model mlp:64-10"]
            wait_for(lambda: at.agg.devices[0].excluded != "", 5, "the aggregator to exclude device 0")
            assert at.agg._alive(time.monotonic()) == []
    finally:
        stop_all(procs)
        os.close(master)
        os.close(slave)
