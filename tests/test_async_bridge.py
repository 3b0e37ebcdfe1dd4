"""The example C firmware (host build) through `fedtiny bridge` over pseudo-terminals, served by
`fedtiny aggregate --mode async`: the device code follows the model versions it is offered (the
frame's round field) and its updates go into FedBuff's buffers."""
import os

from fedtiny.net import state
from netutil import AggregatorThread, Fleet
from serial_fleet import SerialFleet
from test_bridge import firmware  # noqa: F401  (the fixture)


def test_c_firmware_through_bridge_async(tmp_path, firmware):  # noqa: F811
    n_dev, per_device, k = 2, 4, 2
    steps = n_dev * per_device // k
    fleet = Fleet(tmp_path, n_dev)
    cfg = fleet.config(model="mlp:64-10", rounds=steps, min_clients=n_dev, lr=0.1, mode="async", buffer=k,
                       concurrency=n_dev, max_staleness=3)
    with AggregatorThread(cfg) as at, SerialFleet(fleet, firmware, at.server, range(n_dev), per_device,
                                                  timeout=40) as sf:
        at.wait(60)
        for p in sf.devices:          # each device stops after its rounds or when told training finished
            out, err = p.communicate(timeout=30)
            assert p.returncode == 0, out + err
    ck = state.load(os.path.join(fleet.dir, "state"))
    assert ck.round == steps
    arrivals = [a for row in ck.metrics for a in row["arrivals"]]
    assert len(arrivals) == steps * k and {d for d, *_ in arrivals} == set(range(n_dev)), arrivals
    # each device trained version after version: its tags only grow, and none is too stale
    for d in range(n_dev):
        tags = [tag for dev, tag, *_ in arrivals if dev == d]
        assert tags == sorted(set(tags)), tags
    assert all(0 <= row["round"] - tag <= 3 for row in ck.metrics for _, tag, *_ in row["arrivals"])
    accs = [row["test_acc"] for row in ck.metrics]
    assert accs[-1] > 0.5 and accs[-1] > accs[0], accs
