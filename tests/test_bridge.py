"""The example C firmware (firmware_bridge/example, host build) joins through `fedtiny bridge`
over pseudo-terminals and completes rounds: the real device code, the real bridge process."""
import dataclasses
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

from fedtiny.net import state
from netutil import AggregatorThread, Fleet, stop_all
from serial_fleet import FW, SerialFleet, build_host_firmware, provision, write_device_data

pytest.importorskip("serial", reason="fedtiny bridge needs pyserial (pip install 'fedtiny[serial]')")


@pytest.fixture(scope="module")
def firmware(tmp_path_factory):
    return build_host_firmware(tmp_path_factory.mktemp("fw"))


def test_c_firmware_through_bridge_over_pty(tmp_path, firmware):
    n_dev, rounds = 2, 3
    fleet = Fleet(tmp_path, n_dev)
    with AggregatorThread(fleet.config(model="mlp:64-10", rounds=rounds, min_clients=n_dev, lr=0.1)) as at, \
            SerialFleet(fleet, firmware, at.server, range(n_dev), rounds, timeout=40) as sf:
        at.wait(45)
        for p in sf.devices:
            out, err = p.communicate(timeout=10)
            assert p.returncode == 0, out + err
            assert f"{rounds} round(s)" in out, out
        # line noise on a serial port: dropped and counted by the bridge, which stops cleanly
        os.write(sf.master(0), b"\x00\x05noise, not a COBS frame\x00\x03\x01\x00")
        time.sleep(0.5)
        sf.bridge.terminate()
        _, err = sf.bridge.communicate(timeout=10)
        assert sf.bridge.returncode == 0, err
        last = err.strip().splitlines()[-1]
        assert last.startswith("bridge stopped:") and "serial_" in last and "'to_device'" in last, err
    ck = state.load(os.path.join(fleet.dir, "state"))
    assert ck.round == rounds
    assert [row["clients"] for row in ck.metrics] == [n_dev] * rounds
    assert all(set(row["rejected"]) <= {"replay", "duplicate_chunk"} for row in ck.metrics), ck.metrics
    # the C devices really trained: the dense head learns the digits (chance is 0.10)
    accs = [row["test_acc"] for row in ck.metrics]
    assert accs[-1] > 0.6 and accs[-1] > accs[0], accs


def test_provisioning_image_is_checked(tmp_path, firmware):
    """A truncated, corrupted or out-of-range image is refused with one line and exit code 2."""
    fleet = Fleet(tmp_path, 2)
    with np.load(fleet.data[0]) as z:
        x, y = z["x"], z["y"]
    good = provision.image(0, fleet.keys[0], x, y)
    bad_label = y.copy()
    bad_label[5] = 10
    cases = {"truncated": good[:-1], "flipped": good[:200] + bytes([good[200] ^ 1]) + good[201:],
             "empty": b""}
    for name, blob in cases.items():
        path = tmp_path / f"{name}.bin"
        path.write_bytes(blob)
        r = subprocess.run([firmware, "--fd", "0", "--provision", str(path)], capture_output=True, text=True,
                           timeout=10, stdin=subprocess.DEVNULL)
        assert r.returncode == 2 and "not a valid provisioning image" in r.stderr, (name, r.stderr)
    with pytest.raises(ValueError, match="labels must be 0..9"):
        provision.image(0, fleet.keys[0], x, bad_label)
    with pytest.raises(ValueError, match="not pixels"):
        provision.image(0, fleet.keys[0], x + np.float32(1e-3), y)
    # the pixels come back exactly: k / 16 in float32 is what the firmware computes as k * (1/16)
    q, levels = provision.pixels(x)
    assert levels == 16 and np.array_equal(q.astype(np.float32) * np.float32(1 / 16), x)


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
            write_device_data(fleet.data[0], 0, fleet.keys[0], data)
            fw = subprocess.Popen([firmware, "--fd", str(master), "--provision", data, "--rounds", "1",
                                   "--timeout", "20"],
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


# --- the int8 download (--down-codec int8) in the host build ---------------------------------------

# the FTQ8 header byte changed in device 0's first int8 message of each round: the version, the
# parameter count, the magic (codec.HEADER: magic, version u8, flags u8, block size u16, n u32, seed u32)
TAMPER = {1: (4, 0x01), 2: (8, 0x01), 3: (0, 0x04)}     # round -> (byte, xor mask)


def _tampering_relay(server, device_keys):
    """A relay between the bridge and the aggregator that re-signs, with the session key it learns
    from the WELCOME (tests/netutil.SessionKeys), device 0's first int8 model message of each round
    with one FTQ8 header byte changed (TAMPER), under the sequence number of the frame it replaces."""
    from fedtiny.net import wire
    from netutil import SessionKeys
    from udp_relay import LossyRelay

    class Tamper(LossyRelay):
        def __init__(self):
            super().__init__(server, drop=0.0, duplicate=0.0, reorder=0.0)
            self.sessions, self.done = SessionKeys(device_keys), {}

        def _forward(self, data, transport, addr, direction):
            if direction == "down":
                f = self.sessions.decode(data)
                if (f is not None and f.device_id == 0 and f.type == wire.MsgType.MODEL_CHUNK and f.chunk_index == 0
                        and f.round in TAMPER and f.round not in self.done):
                    at, mask = TAMPER[f.round]
                    payload = bytearray(f.payload)
                    payload[at] ^= mask
                    self.done[f.round] = bytes(f.payload[:16])
                    data = self.sessions.encode(dataclasses.replace(f, payload=bytes(payload)), f.seq)
            self._forward_one(data, transport, addr, direction)

    return Tamper()


def test_c_firmware_int8_download_through_bridge_refuses_a_wrong_header(tmp_path, firmware):
    """--down-codec int8: the C firmware (host build) receives the FTQ8 message into its training
    copy and decodes it into its global copy (firmware_bridge/example/fw_device.c
    decode_q8_download); the offer's model hash checks the decoded model. A relay re-signs device
    0's first message of each round with one header byte wrong (its version, its parameter count,
    its magic: the blocks, and so the decoded weights and their hash, unchanged): the firmware
    refuses each one by its header (counted: three more refusals than device 1), asks again and
    finishes every round; and both train (the dense head learns the digits)."""
    n_dev, rounds = 2, 3
    fleet = Fleet(tmp_path, n_dev)
    outs = []
    with AggregatorThread(fleet.config(model="mlp:64-10", rounds=rounds, min_clients=n_dev, lr=0.1,
                                       down_codec="int8", round_timeout=30.0)) as at, \
            _tampering_relay(at.address, fleet.keys) as relay, \
            SerialFleet(fleet, firmware, f"{relay.addr[0]}:{relay.addr[1]}", range(n_dev), rounds, timeout=40) as sf:
        at.wait(60)
        for p in sf.devices:
            out, err = p.communicate(timeout=10)
            assert p.returncode == 0, out + err
            outs.append(out)
        tampered = dict(relay.done)
    assert sorted(tampered) == sorted(TAMPER) and all(h.startswith(b"FTQ8") for h in tampered.values()), tampered
    done = [int(re.search(r"(\d+) round\(s\)", o).group(1)) for o in outs]
    refused = [int(re.search(r"(\d+) frame\(s\) rejected", o).group(1)) for o in outs]
    assert done == [rounds, rounds], outs
    # device 1 (nothing tampered) counts what any device does here (a frame after the last round);
    # device 0 refused each tampered message besides
    assert refused[0] >= refused[1] + len(TAMPER), outs
    ck = state.load(os.path.join(fleet.dir, "state"))
    assert ck.round == rounds and [row["clients"] for row in ck.metrics] == [n_dev] * rounds
    accs = [row["test_acc"] for row in ck.metrics]
    assert accs[-1] > 0.6 and accs[-1] > accs[0], accs
