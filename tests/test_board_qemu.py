"""The example firmware booted on an emulated Cortex-M4 board (firmware_bridge/boards/mps2-an386
under qemu-system-arm) federates through the real `fedtiny bridge` with the real `fedtiny
aggregate`: over an unpaced pseudo-terminal, over a line paced at a real 115200 baud, and across
a reset of the board in the middle of a round."""
import json
import os
import struct
import subprocess
import sys
import time

import pytest

from fedtiny.net import state
from netutil import Fleet, free_udp_port, stop_all

pytest.importorskip("serial", reason="fedtiny bridge needs pyserial (pip install 'fedtiny[serial]')")
from board_qemu import ARM_CC, BOOT_LINE, INSTRUCTIONS_PER_CYCLE, QEMU, ROUND_LINE, Board, build  # noqa: E402
from serial_fleet import write_device_data  # noqa: E402
from serial_relay import PacedRelay  # noqa: E402

pytestmark = pytest.mark.skipif(not (QEMU and ARM_CC), reason="needs qemu-system-arm and gcc-arm-none-eabi "
                                 "(apt-get install qemu-system-arm gcc-arm-none-eabi libnewlib-arm-none-eabi)")
ROUNDS = 3
STACK_BYTES = 0x2000   # linker.ld
FINISHED = "fw: the aggregator says training is finished"


@pytest.fixture(scope="module")
def elf(tmp_path_factory):
    return build(str(tmp_path_factory.mktemp("mps2")))


@pytest.fixture(scope="module")
def elf_9600(tmp_path_factory):
    return build(str(tmp_path_factory.mktemp("mps2_9600")), baud=9600)


def aggregate_cmd(fleet: Fleet, port: int, rounds: int, down_codec: str = "float32") -> list[str]:
    return [sys.executable, "-m", "fedtiny.cli", "aggregate", "--listen", f"127.0.0.1:{port}", "--model", "mlp:64-10",
            "--rounds", str(rounds), "--min-clients", "1", "--keys", fleet.keyfile, "--state",
            os.path.join(fleet.dir, "state"), "--dataset", "digits", "--lr", "0.1", "--batch", "10",
            "--codec", "int8-stochastic", "--down-codec", down_codec, "--seed", "0", "--round-timeout", "30"]


class Federation:
    """One device on the emulated board, a (paced) line, the bridge and the aggregator."""

    def __init__(self, tmp_path, elf: str, baud: int | None, *, icount: bool, rounds: int = ROUNDS,
                 monitor: bool = False, down_codec: str = "float32"):
        self.fleet = Fleet(tmp_path, 2)   # the 1,797 digits in halves: device 0 holds 647 after the test split
        image = os.path.join(self.fleet.dir, "device0.bin")
        write_device_data(self.fleet.data[0], 0, self.fleet.keys[0], image)
        self.board = Board(elf, image, self.fleet.dir, icount=icount, monitor=monitor)
        self.line = PacedRelay(self.board.tty, baud).__enter__()
        port = free_udp_port()
        self.procs = [subprocess.Popen(aggregate_cmd(self.fleet, port, rounds, down_codec), cwd=self.fleet.dir,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
        self.procs.append(subprocess.Popen(
            [sys.executable, "-m", "fedtiny.cli", "bridge", "--server", f"127.0.0.1:{port}", "--serial", self.line.path,
             "--baud", str(baud or 115200)], cwd=self.fleet.dir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True))
        self.t0 = time.monotonic()

    def finish(self, timeout: float) -> dict:
        agg, bridge = self.procs
        try:
            out, err = agg.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"aggregator did not finish in {timeout} s; board:\n{self.board.log()}")
        seconds = time.monotonic() - self.t0
        assert agg.returncode == 0, out + err
        self.board.wait_for(__import__("re").compile(FINISHED), timeout=10)
        code = self.board.proc.wait(10)   # the firmware stops (semihosting exit) when told training is finished
        assert code == 0, self.board.log()
        bridge.terminate()
        _, bridge_err = bridge.communicate(timeout=10)
        assert bridge.returncode == 0, bridge_err
        metrics = state.load(os.path.join(self.fleet.dir, "state")).metrics
        return {"metrics": metrics, "rounds": self.board.rounds(), "line": self.line.counts(), "seconds": seconds,
                "log": self.board.log(), "bridge": bridge_err.strip().splitlines()[-1]}

    def close(self) -> None:
        stop_all(self.procs)
        self.board.stop()
        self.line.__exit__(None, None, None)


def federate(tmp_path, elf: str, baud: int | None, *, icount: bool, timeout: float = 90.0,
             down_codec: str = "float32") -> dict:
    os.makedirs(tmp_path, exist_ok=True)
    fed = Federation(tmp_path, elf, baud, icount=icount, down_codec=down_codec)
    try:
        return fed.finish(timeout)
    finally:
        fed.close()


def check_training(run: dict) -> None:
    rows = run["metrics"]
    assert [row["clients"] for row in rows] == [1] * ROUNDS, rows
    # the board really trained: the dense head learns the digits (chance is 0.10)
    accs = [row["test_acc"] for row in rows]
    assert accs[-1] > 0.6 and accs[-1] > accs[0], accs
    fw = run["rounds"]
    assert [r["done"] for r in fw] == list(range(1, ROUNDS + 1)), run["log"]
    assert all(r["rx_dropped"] == 0 and r["rejected"] == 0 for r in fw), run["log"]
    # the deepest stack (painted at reset, measured after each round) stays within half its 8 KB region
    assert all(r["stack_unused"] > STACK_BYTES // 2 for r in fw), run["log"]


def summary(run: dict, icount: bool) -> dict:
    fw = run["rounds"]
    line = run["line"]
    out = {"rounds": len(fw),
           "line_bytes_per_round": round((line["to_device"] + line["from_device"]) / len(fw)),
           "fw_bytes_per_round": [r["rx"] + r["tx"] for r in fw],
           "stack_unused": min(r["stack_unused"] for r in fw),
           "seconds": round(run["seconds"], 1)}
    if icount:   # only then are busy cycles instructions (see board_qemu)
        out["instructions_per_round"] = [r["cycles"] * INSTRUCTIONS_PER_CYCLE for r in fw]
    return out


def test_board_federates_unpaced_and_at_115200_baud(tmp_path, elf):
    """>= 3 rounds through the bridge, instructions counted by -icount; then the same over a line
    paced at a real 115200 baud (guest clock = host clock), which must carry <= 1.1x the bytes of
    the unpaced line: the timers wait for a whole model-chunk line before asking again (with the
    old fixed 100 ms the paced line carried 1.6x)."""
    fast = federate(tmp_path / "unpaced", elf, None, icount=True)
    check_training(fast)
    a = summary(fast, icount=True)
    print("\nboard mps2-an386 unpaced, -icount shift=0:", json.dumps(a))
    # round 1 includes boot and joining; every round trains 647 samples once: about 10 M instructions
    for n in a["instructions_per_round"]:
        assert 5e6 < n < 3e7, a
    paced = federate(tmp_path / "b115200", elf, 115200, icount=False)
    check_training(paced)
    b = summary(paced, icount=False)
    print("board mps2-an386 at 115200 baud:", json.dumps(b))
    assert b["line_bytes_per_round"] <= 1.1 * a["line_bytes_per_round"], (a, b)


def test_port_fits_a_small_part(elf):
    """The bootable image (startup, drivers, firmware, wire library, training engine) fits 32 KB of
    flash and 64 KB of RAM; the data set is not in it (the provisioning image, separately)."""
    size = subprocess.run(["arm-none-eabi-size", elf], capture_output=True, text=True, check=True)
    text, data, bss = map(int, size.stdout.splitlines()[1].split()[:3])
    assert text + data <= 32 * 1024, (text, data)
    assert data + bss <= 64 * 1024, (data, bss)


def test_board_federates_at_9600_baud(tmp_path, elf_9600):
    """TinyFedTL's rate: a round of the example model (about 4.1 KB on the line) completes in about
    4 s, and the paced line carries <= 1.1x the bytes of the same firmware on an unpaced line."""
    fast = federate(tmp_path / "unpaced", elf_9600, None, icount=False)
    check_training(fast)
    run = federate(tmp_path / "b9600", elf_9600, 9600, icount=False, timeout=120)
    check_training(run)
    a, b = summary(fast, icount=False), summary(run, icount=False)
    print("\nboard mps2-an386 built for 9600 baud, unpaced:", json.dumps(a), "\nat 9600 baud:", json.dumps(b))
    assert b["line_bytes_per_round"] <= 1.1 * a["line_bytes_per_round"], (a, b)


def test_board_int8_download_at_115200_and_9600_baud(tmp_path, elf, elf_9600):
    """--down-codec int8: the firmware receives the 808-byte FTQ8 message (one chunk) into its
    training copy and decodes it into its global copy with the aggregator's kernel (no buffer of
    its own: RAM unchanged), the offer's model hash checks it bit for bit, and it trains as well.
    Bytes per round on the serial line and the firmware's own round time, float32 against int8
    download, at 115200 and at 9600 baud (the lines really paced)."""
    out = {}
    for baud, image in ((115200, elf), (9600, elf_9600)):
        for down in ("float32", "int8"):
            run = federate(tmp_path / f"{down}-{baud}", image, baud, icount=False, timeout=120, down_codec=down)
            check_training(run)
            s = summary(run, icount=False)
            ends = [r["ms"] for r in run["rounds"]]          # the board's clock at each round's end
            s["round_ms"] = [b - a for a, b in zip([0] + ends, ends)]   # round 1 includes boot and joining
            s["to_device_per_round"] = round(run["line"]["to_device"] / len(run["rounds"]))
            s["test_acc"] = run["metrics"][-1]["test_acc"]
            out[(down, baud)] = s
            print(f"\nboard mps2-an386 at {baud} baud, --down-codec {down}:", json.dumps(s))
    for baud in (115200, 9600):
        f32, q8 = out[("float32", baud)], out[("int8", baud)]
        # the model: 2,600 float32 bytes in 3 frames against 808 in 1: about 1,900 line bytes fewer
        assert q8["to_device_per_round"] <= f32["to_device_per_round"] - 1500, (f32, q8)
        assert abs(q8["test_acc"] - f32["test_acc"]) < 0.05, (f32, q8)


def test_board_reset_mid_round_is_not_a_replay(tmp_path, elf_9600):
    """system_reset of the board while it downloads round 2 (at 9600 baud, a download takes 3 s):
    it boots with the next value of its non-volatile boot counter, so its join nonce (boot, join)
    is new, the aggregator refuses nothing as a replay, and the device finishes round 2 after the
    reset."""
    fed = Federation(tmp_path, elf_9600, 9600, icount=False, monitor=True)
    try:
        first = fed.board.wait_for(ROUND_LINE, 1, timeout=60)
        assert first, fed.board.log()
        time.sleep(1.5)   # round 2: OFFER, ACK, model chunks under way
        assert len(fed.board.rounds()) == 1, fed.board.log()
        fed.board.monitor("system_reset")
        t_reset = time.monotonic()
        boots = fed.board.wait_for(BOOT_LINE, 2, timeout=10)
        assert len(boots) == 2, fed.board.log()
        after = fed.board.wait_for(ROUND_LINE, 2, timeout=30)
        assert len(after) == 2, fed.board.log()
        rejoin_s = time.monotonic() - t_reset
        run = fed.finish(90)
    finally:
        fed.close()
    # a new device (no counter file yet) boots as 1; the reset boots as 2, stored before any frame
    assert [int(b.group(3)) for b in boots] == [1, 2], run["log"]
    with open(os.path.join(fed.fleet.dir, "fedtiny-nv.bin"), "rb") as f:
        value, check = struct.unpack("<II", f.read())
    assert value == 2 and check == value ^ 0xFFFFFFFF
    rows = run["metrics"]
    assert [row["clients"] for row in rows] == [1] * ROUNDS, rows
    assert all("replay" not in row["rejected"] for row in rows), rows
    fw = run["rounds"]
    # the counters restart with the board; the round after the reset is round 2
    assert [r["round"] for r in fw] == [1, 2, 3] and [r["done"] for r in fw] == [1, 1, 2], run["log"]
    print(f"\nboard reset mid-round: back to a finished round {rejoin_s:.1f} s after system_reset; "
          f"rejected by the aggregator: {[row['rejected'] for row in rows]}")
    assert rejoin_s < 15, run["log"]
