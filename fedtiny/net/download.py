"""The model download of one round, paced (policy: docs/network.md "Model download").

No I/O and no clock of its own (the aggregator passes `now` and sends what next_sends returns).
What made the download amplify 14-38x with 35-50 devices: every ACK a device sent while its
chunks were still queued in the aggregator's socket buffer asked for them again, and each ask
queued another copy. Here:

- A chunk is sent again only when an ACK lists it as missing that the device sent at least one
  retransmission timeout (RTO) after the chunk's last copy went out: a silent device gets no
  resends at all (it asks again itself, with its own backoff), and a device that is slow to read
  its socket is not sent copies of what is still queued for it. The RTO is measured, as TCP
  measures it (Jacobson/Karels, RFC 6298): smoothed round-trip time from ACKs of chunks sent
  once (Karn: a resent chunk gives no sample) plus four deviations, at least RTO_MIN; it
  doubles on each resend that an ACK without progress triggers, up to RTO_MAX.
- At most `window` chunks are in flight per device (sent, not acknowledged, not timed out): a
  device's receive queue never overflows (64 x 1.2 KB fits the 212 KB default socket buffer).
- Token buckets: one per device (device_rate bytes/s) and one for the whole round
  (total_rate); devices are served round-robin from a rotating start, so a slow or silent device
  never holds the others up and every device gets its share.

So without loss each chunk goes out once: the aggregator sends model x devices bytes (plus
OFFERs and ACK answers); a loss costs one chunk after one RTO.
"""
from __future__ import annotations

import numpy as np

RTO_MIN = 0.5          # seconds: below it a busy device's scheduling jitter looks like loss
RTO_INITIAL = 1.0      # before the first sample (RFC 6298 section 2.1)
RTO_MAX = 8.0
BURST_SECONDS = 0.02   # a bucket holds this many seconds of its rate


class _Device:
    __slots__ = ("have", "sent_at", "sends", "tokens", "srtt", "rttvar", "rto", "timeouts", "last_timeout",
                 "n_have", "last_ack")

    def __init__(self, n_chunks: int, burst: float):
        self.have = np.zeros(n_chunks, dtype=bool)
        self.sent_at = np.full(n_chunks, -np.inf)
        self.sends = np.zeros(n_chunks, dtype=np.uint16)
        self.tokens = burst
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.rto = RTO_INITIAL
        self.timeouts = 0             # timeouts in a row without progress
        self.last_timeout = -np.inf
        self.n_have = 0
        self.last_ack = -np.inf


class ModelDownload:
    """Which model chunk goes to which device next, for one round."""

    def __init__(self, n_chunks: int, chunk_bytes: int, *, window: int, total_rate: float,
                 device_rate: float):
        if n_chunks < 1 or chunk_bytes < 1 or window < 1:
            raise ValueError("n_chunks, chunk_bytes and window must be >= 1")
        if not total_rate > 0 or not device_rate > 0:
            raise ValueError(f"rates must be > 0 bytes/s, got {total_rate} and {device_rate}")
        self.n_chunks, self.chunk_bytes, self.window = int(n_chunks), int(chunk_bytes), int(window)
        self.total_rate, self.device_rate = float(total_rate), float(device_rate)
        self._burst_total = max(total_rate * BURST_SECONDS, window * chunk_bytes)
        self._burst_device = max(device_rate * BURST_SECONDS, chunk_bytes)
        self._tokens = self._burst_total
        self._last = None
        self._devices: dict[int, _Device] = {}
        self._order: list[int] = []
        self._next = 0
        self.sent_chunks = 0
        self.resent_chunks = 0
        self.restarts = 0

    def __contains__(self, device_id: int) -> bool:
        return device_id in self._devices

    def rto(self, device_id: int) -> float:
        return self._devices[device_id].rto

    def ack(self, device_id: int, received: np.ndarray, now: float) -> None:
        """The device's ACK: `received` is a bool per chunk (what it has). Starts its download
        on the first ACK; a complete download ends it."""
        dev = self._devices.get(device_id)
        if dev is not None and (dev.have & ~received).any():   # it lost chunks: it restarted
            self.forget(device_id)
            self.restarts += 1
            dev = None
        if dev is None:
            dev = self._devices[device_id] = _Device(self.n_chunks, self._burst_device)
            self._order.append(device_id)
        new = received & ~dev.have
        if new.any():
            once = new & (dev.sends == 1)
            if once.any():      # Karn: only chunks sent once time the round trip; the oldest
                # copy, because a device acknowledges a whole window at once
                self._sample(dev, float(now - dev.sent_at[once].min()))
            dev.have |= received
            dev.n_have = int(dev.have.sum())
            dev.timeouts = 0
        dev.last_ack = now
        if dev.n_have == self.n_chunks:
            self.forget(device_id)

    def _sample(self, dev: _Device, rtt: float) -> None:
        rtt = max(rtt, 0.0)
        if dev.srtt is None:
            dev.srtt, dev.rttvar = rtt, rtt / 2
        else:
            dev.rttvar = 0.75 * dev.rttvar + 0.25 * abs(dev.srtt - rtt)
            dev.srtt = 0.875 * dev.srtt + 0.125 * rtt
        dev.rto = min(RTO_MAX, max(RTO_MIN, dev.srtt + 4 * dev.rttvar))

    def forget(self, device_id: int) -> None:
        """The device finished, left the round, or restarted its download (a new OFFER)."""
        if self._devices.pop(device_id, None) is not None:
            self._order.remove(device_id)

    @property
    def active(self) -> int:
        return len(self._devices)

    def next_sends(self, now: float, limit: int | None = None) -> list[tuple[int, int]]:
        """(device, chunk) pairs to send now, at most `limit`, within the buckets and windows."""
        if self._last is None:
            self._last = now
        dt = max(0.0, now - self._last)
        self._last = now
        self._tokens = min(self._burst_total, self._tokens + dt * self.total_rate)
        out: list[tuple[int, int]] = []
        n = len(self._order)
        if n == 0:
            return out
        start = self._next % n
        for k in range(n):
            if self._tokens < self.chunk_bytes or (limit is not None and len(out) >= limit):
                break
            device_id = self._order[(start + k) % n]
            dev = self._devices[device_id]
            dev.tokens = min(self._burst_device, dev.tokens + dt * self.device_rate)
            want = self._due(dev, now)
            if want.size == 0:
                continue
            budget = int(min(dev.tokens, self._tokens) // self.chunk_bytes)
            if limit is not None:
                budget = min(budget, limit - len(out))
            want = want[:budget]
            if want.size and (dev.sends[want] > 0).any() and now - dev.last_timeout >= dev.rto:
                # copies timed out: a second timeout in a row without progress backs off (RFC 6298 5.5)
                if dev.timeouts > 0:
                    dev.rto = min(RTO_MAX, dev.rto * 2)
                dev.timeouts += 1
                dev.last_timeout = now
            for c in want.tolist():
                resend = dev.sends[c] > 0
                dev.sent_at[c] = now
                dev.sends[c] = min(int(dev.sends[c]) + 1, 0xFFFF)
                self.sent_chunks += 1
                self.resent_chunks += int(resend)
                out.append((device_id, c))
            taken = want.size * self.chunk_bytes
            dev.tokens -= taken
            self._tokens -= taken
            self._next = (start + k + 1) % n
        return out

    def _due(self, dev: _Device, now: float) -> np.ndarray:
        """The device's chunks that may go now: missing, and never sent or reported missing by an
        ACK sent an RTO after their last copy, within its window of chunks in flight."""
        missing = ~dev.have
        lost = (dev.last_ack - dev.sent_at > dev.rto) & (now - dev.sent_at > dev.rto)
        out = missing & np.isfinite(dev.sent_at) & ~lost
        in_flight = int(np.count_nonzero(out))
        room = self.window - in_flight
        if room <= 0:
            return np.empty(0, dtype=np.int64)
        return np.flatnonzero(missing & ~out)[:room]
