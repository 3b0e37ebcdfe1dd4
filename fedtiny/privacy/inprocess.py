"""One secure round with every party in this process: the messages go from one stage machine to
the other as objects (what `fedtiny simulate --secagg` and the tests run; a network transport
moves the same messages as frames). Dropouts are named by the phase at which a device goes silent.
"""
from __future__ import annotations

from collections import Counter
from typing import Callable, Mapping

from . import secagg
from .secagg import KEYS, MASKED, SHARES, UNMASK, Device, DeviceAbort, MaskedUpdate, Result, ServerRound


def run_round(server: ServerRound, devices: Mapping[int, Device], make_update: Callable[[Device], MaskedUpdate],
              drop: Mapping[int, str] | None = None, device_aborts: Counter | None = None) -> Result:
    """Run every stage of `server`'s round. drop: {device: phase} -- the device sends nothing from
    that phase on (keys: silent from the start; unmask: its vector is in, it never reveals shares).
    make_update(device) is called only for devices that send a masked vector. A device that aborts
    (DeviceAbort) is counted in device_aborts by reason and behaves as a dropout."""
    drop = dict(drop or {})
    bad = sorted(set(drop.values()) - set(secagg.PHASES))
    if bad:
        raise ValueError(f"unknown dropout phase {bad[0]!r}: use one of {', '.join(secagg.PHASES)}")
    aborts = device_aborts if device_aborts is not None else Counter()
    order = {p: i for i, p in enumerate(secagg.PHASES)}

    def live(d: int, phase: str) -> bool:
        return d not in drop or order[phase] < order[drop[d]]

    def deliver(d: int, call: Callable[[], object]):
        try:
            reply = call()
        except DeviceAbort as exc:
            aborts[exc.reason] += 1
            return None
        if reply is not None:
            verdict = server.receive(reply)
            if not verdict.accepted:  # an honest device's message refused: a bug, say so loudly
                raise RuntimeError(f"secure round {server.setup.round_id}: device {d}'s {type(reply).__name__} "
                                   f"refused: {verdict.reason} {verdict.detail}")
        return reply

    setup = server.setup
    for d in setup.devices:
        if live(d, KEYS):
            deliver(d, lambda d=d: devices[d].on_setup(setup))
    out = server.advance()
    if isinstance(out, Result):
        return out
    for d, key_list in out.items():
        if live(d, SHARES):
            deliver(d, lambda d=d, m=key_list: devices[d].on_key_list(m))
    out = server.advance()
    if isinstance(out, Result):
        return out
    for d, share_list in out.items():
        if not live(d, MASKED):
            continue
        deliver(d, lambda d=d, m=share_list: devices[d].on_share_list(m))
        if devices[d].stage == secagg.ABORTED:
            continue
        deliver(d, lambda d=d: make_update(devices[d]))
    unmask = server.advance()
    if isinstance(unmask, Result):
        return unmask
    for d in unmask.survivors:
        if live(d, UNMASK):
            deliver(d, lambda d=d: devices[d].on_unmask(unmask))
    return server.advance()
