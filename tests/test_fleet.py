"""A fleet per round (issue 10): real client processes, real UDP on 127.0.0.1.

- 100 `fedtiny client` processes of the 2nn on Fashion-MNIST shards and one aggregator: 3 rounds
  with all 100 devices in every round, and the aggregator sends at most 1.2 x model x devices
  per round (slow: a few minutes on 2 cores; tests/fleet.py runs it by hand).
- (The 50,000 datagram/s garbage flood: tests/test_flood.py.)
- Slot squatting: 8 keyed devices that open uploads and never finish, with only 8 slots, do not
  make rounds end empty (upload deadline, and a squatter reclaimed never displaces anyone).
"""
import threading
import time

import pytest

from fedtiny.net import ingest, wire
from fleet import run_fleet
from netutil import AggregatorThread, Fleet, HandDevice, stop_all


def test_slots_are_sized_by_memory():
    """The default budget (32 MB) stages 155 2nn uploads (205,540 bytes each) at once, not a small constant."""
    assert ingest.slots_for_budget(199_210, 32e6) == 155
    assert ingest.slots_for_budget(199_210, 1) == 1


@pytest.mark.slow
def test_100_real_clients_three_rounds_without_amplification(tmp_path):
    out = run_fleet(str(tmp_path), 100, 3, round_timeout=240, budget_s=900)
    rows = out["metrics"]
    report = [(r["round"], r["clients"], round(r["round_s"], 1), r["bytes_down"],
               round(r["bytes_down"] / (out["model_bytes"] * 100), 3)) for r in rows]
    print("\nround, devices, seconds, bytes sent, x (model x 100):", report)
    assert out["returncode"] == 0, out["aggregator_log"][-3000:]
    assert [r["clients"] for r in rows] == [100, 100, 100], report
    for r in rows:
        assert r["bytes_down"] <= 1.2 * out["model_bytes"] * 100, report


# --- slot squatting -------------------------------------------------------------------------------

class Squatter(threading.Thread):
    """A keyed device that takes part in every round, opens its upload, sends a chunk now and
    then (so it never looks stalled) and never finishes."""

    def __init__(self, address, device_id: int, key: bytes):
        super().__init__(daemon=True)
        self.dev = HandDevice(address, device_id, key)
        self.stop = threading.Event()
        self.slots_held = 0

    def run(self) -> None:
        dev = self.dev
        try:
            dev.join(50)
        except AssertionError:
            return
        dev.send(dev.hello(50))
        rnd, n_up, k, last = 0, 0, 0, 0.0
        dev.sock.settimeout(0.05)
        while not self.stop.is_set():
            try:
                f = wire.decode(dev.sock.recv(2048), dev.key, None)
                if f.type == wire.MsgType.OFFER and f.round != rnd:
                    rnd, n_up, k = f.round, wire.Offer.unpack(f.payload).update_chunks, 0
                    last = 0.0                                             # open an upload at once
                elif f.type == wire.MsgType.ACK and f.round == rnd:
                    self.slots_held += 1
            except (OSError, wire.FrameError):
                pass
            now = time.monotonic()
            if now - last < 0.25:
                continue
            last = now
            if rnd == 0:
                try:
                    dev.send(dev.hello(50))
                except OSError:
                    return
                continue
            result = wire.Result(n_samples=50, loss=1.0, steps=5, update_chunks=n_up).pack()
            k = (k + 1) % (n_up - 1)                                       # never the last chunk
            try:
                dev.send(dev.frame(wire.MsgType.RESULT, rnd, result))      # asks for a slot again and again
                dev.send(dev.frame(wire.MsgType.UPDATE_CHUNK, rnd, bytes(wire.UPDATE_CHUNK_BYTES), chunk=(k, n_up)))
                dev.send(dev.hello(50))
            except OSError:       # the aggregator finished (ICMP port unreachable)
                return


@pytest.mark.slow
def test_slot_squatting_does_not_empty_rounds(tmp_path):
    honest, squatters = 4, 8
    fleet = Fleet(tmp_path, honest + squatters)
    # As few slots as squatters, so only the upload deadline and the fair reclaim keep rounds going
    # (the default, sized by memory, would stage thousands of these small updates at once).
    cfg = fleet.config(rounds=3, min_clients=honest + squatters, dataset=None, round_timeout=30.0, slots=squatters,
                       upload_seconds=1.0)
    with AggregatorThread(cfg) as at:
        squat = [Squatter(at.address, d, fleet.keys[d]) for d in range(honest, honest + squatters)]
        for s in squat:
            s.start()
        procs = fleet.start_clients(at.server, ids=range(honest))
        try:
            # every round selects all 12 and closes as soon as the 4 honest updates are in
            deadline = time.monotonic() + 60
            while at.agg.current is None and time.monotonic() < deadline:
                time.sleep(0.01)
            at.agg.cfg.min_clients = honest
            at.agg.current.rnd.min_updates = honest
            at.wait(150)
        finally:
            for s in squat:
                s.stop.set()
            for s in squat:
                s.join(5)
                s.dev.close()
            stop_all(procs)
        rows = at.agg.metrics
    print("\n", [(r["round"], r["clients"], r["selected"], round(r["round_s"], 2), r["dropped_uploads"][:12]) for r in rows])
    assert sum(s.slots_held for s in squat) >= 2 * squatters, "the squatters did not hold the slots: the test tests nothing"
    assert sum(len(r["dropped_uploads"]) for r in rows) >= squatters, "no squatter's slot was ever reclaimed"
    assert len(rows) == 3
    for r in rows:
        assert r["clients"] == honest and r["selected"] == honest + squatters, r
        assert sorted(set(range(honest + squatters)) - set(r["stragglers"])) == list(range(honest)), r
