"""SecAgg+ (Bell et al., CCS 2020, on Bonawitz et al., CCS 2017): the aggregator learns only the
sum of the surviving devices' grid vectors. Two stage machines, one per side, no I/O and no clock
(like fedtiny.rounds: a transport moves the messages, `now` is passed in). docs/secagg.md holds
the protocol, the defaults and the security argument; this docstring names every message and abort.

Messages (server -> device marked <-, device -> server marked ->), in stage order:
    <- Setup         round id, session bytes, selected devices, k, t, min_survivors, graph seed, grid
    -> Keys          two fresh X25519 public keys (c: share encryption, s: mask agreement) and a
                     SHA-256 commitment to the self-mask seed
    <- KeyList       the keys of the device's neighbours that answered (U1)
    -> Shares        one ChaCha20-Poly1305 ciphertext per neighbour in U1: the neighbour's Shamir
                     shares (threshold t) of the self-mask seed b_u and of the mask secret key s_u
    <- ShareList     the ciphertexts addressed to this device by neighbours that sent Shares (U2)
    -> MaskedUpdate  y_u = q_u + PRG(b_u) + sum_{v in N(u) & U2} sign(u, v) PRG(s_uv)  mod 2^b
    <- Unmask        the survivors U3 (devices whose masked vector arrived)
    -> UnmaskShares  for each neighbour w in U2 whose share this device holds: the share of b_w
                     if w in U3, else the share of s_w; never both kinds for one w (enforced here:
                     a device answers one survivor set per round)

Server aborts (the round is abandoned, the model unchanged): too_few_keys, too_few_shares,
too_few_masked, too_few_unmask (fewer than min_survivors answered the stage),
survivors_disconnected (on a sparse graph, dropouts split the survivors into groups whose sums
would each be revealed), cannot_reconstruct
(a secret the sum needs has fewer than t shares), bad_reconstruction (no t of the revealed
shares, up to REBUILD_TRIES subsets tried, rebuild a secret that matches its commitment or public
key; a wrong share that other subsets get around is only counted: bad_share_revealed).
Server rejections of one message (counted by reason; nothing of it reaches the sum):
wrong_round, not_selected, wrong_stage, duplicate, key_conflict, bad_key, share_misaddressed,
bad_share, not_in_stage, wrong_length, conflicting_update, bad_unmask.
Device aborts (DeviceAbort; the device stops, as a dropout): not_selected, wrong_round,
bad_setup, wrong_stage, too_few_neighbours, bad_key, too_few_survivors, inconsistent_survivors,
conflicting_unmask. A ciphertext that does not decrypt is counted (share_undecryptable) and the
device holds no share of its sender; the sum stays exact.
"""
from __future__ import annotations

import functools
import hashlib
import itertools
import math
import os
import random
import struct
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..rounds import ACCEPTED, DUPLICATE, NOT_SELECTED, WRONG_ROUND, Verdict
from . import grid as gridmod
from . import shamir
from .grid import Grid, ModularSum

PROTOCOL = b"fedtiny/secagg/v1"
KEY_BYTES = 32
SHARE_PLAIN = struct.Struct("<IIB32s32s")     # owner, recipient, x, share of b_owner, share of s_owner
SHARE_CIPHER_BYTES = SHARE_PLAIN.size + 16    # + Poly1305 tag
_NONCE = bytes(12)                            # every share key is used for exactly one message
COMPLETE_GRAPH_MAX = 32                       # below this many devices every pair is connected
REBUILD_TRIES = 64                            # t-subsets of revealed shares tried per secret

# stages of the server round
KEYS, SHARES, MASKED, UNMASK, DONE, ABORTED = "keys", "shares", "masked", "unmask", "done", "aborted"
PHASES = (KEYS, SHARES, MASKED, UNMASK)  # the phases a device can drop out at

# rejection reasons (besides rounds.WRONG_ROUND, NOT_SELECTED, DUPLICATE)
WRONG_STAGE = "wrong_stage"
KEY_CONFLICT = "key_conflict"
BAD_KEY = "bad_key"
SHARE_MISADDRESSED = "share_misaddressed"
BAD_SHARE = "bad_share"
NOT_IN_STAGE = "not_in_stage"
WRONG_LENGTH = "wrong_length"
CONFLICTING_UPDATE = "conflicting_update"
BAD_UNMASK = "bad_unmask"


# --- parameters ----------------------------------------------------------------------------------

def default_neighbours(n: int) -> int:
    """k: every other device for n <= COMPLETE_GRAPH_MAX, else the even number >= 3 log2(n) * 2 (Bell et al.: O(log n))."""
    if n <= COMPLETE_GRAPH_MAX:
        return n - 1
    k = 2 * math.ceil(3 * math.log2(n))
    return n - 1 if k >= n - 1 else k


def default_threshold(k: int) -> int:
    """t = floor(k/2) + 1: a strict majority of a device's neighbours (docs/secagg.md "Security")."""
    return k // 2 + 1


@dataclass(frozen=True)
class Config:
    """What the aggregator chooses per deployment (None: the default for the round's size)."""

    clip: float = 1.0
    bits: int | None = None              # grid.choose_bits(n) when None
    neighbours: int | None = None        # k
    threshold: int | None = None         # t
    min_survivors: int | None = None     # default t + 1

    def for_round(self, n: int) -> tuple[int, int, int, Grid]:
        k = default_neighbours(n) if self.neighbours is None else int(self.neighbours)
        if not 1 <= k <= n - 1:
            raise ValueError(f"--secagg-k {k}: a device has 1 to {n - 1} neighbours in a round of {n}")
        if k != n - 1 and k % 2:
            raise ValueError(f"--secagg-k {k}: a sparse graph needs an even k (or k = {n - 1}, every pair)")
        if k > shamir.MAX_SHARES:
            raise ValueError(f"--secagg-k {k}: at most {shamir.MAX_SHARES} neighbours (shares over GF(2^8))")
        t = default_threshold(k) if self.threshold is None else int(self.threshold)
        if not 1 <= t <= k:
            raise ValueError(f"--secagg-t {t} must be in [1, k = {k}]")
        m = t + 1 if self.min_survivors is None else int(self.min_survivors)
        if not max(2, t) <= m <= n:
            raise ValueError(f"--secagg-min-survivors {m} must be in [max(2, t) = {max(2, t)}, {n}]")
        return k, t, m, Grid.for_round(self.clip, n, self.bits)


@dataclass(frozen=True)
class Setup:
    round_id: int
    session: bytes                 # 16 random bytes of the aggregator: binds every derived key to this round
    devices: tuple[int, ...]       # selected, sorted
    k: int
    t: int
    min_survivors: int
    graph_seed: bytes
    grid: Grid
    dp_bits: int = 0               # distributed DP (fedtiny.privacy.dp_secagg): the DDGauss modulus 2^b; 0 = none
    dp_z: float = 0.0              # its noise multiplier (float32 on the wire)

    @classmethod
    def create(cls, round_id: int, devices: Sequence[int], config: Config,
               random_bytes: Callable[[int], bytes] = os.urandom) -> "Setup":
        devs = tuple(sorted({int(d) for d in devices}))
        if len(devs) < 2:
            raise ValueError("secure aggregation needs at least 2 devices in a round")
        k, t, m, g = config.for_round(len(devs))
        return cls(int(round_id), random_bytes(16), devs, k, t, m, random_bytes(16), g)

    @functools.cached_property
    def graph(self) -> dict[int, tuple[int, ...]]:
        return neighbours(self.devices, self.k, self.graph_seed)

    def neighbours(self, device: int) -> tuple[int, ...]:
        return self.graph[device]


def neighbours(devices: Sequence[int], k: int, graph_seed: bytes) -> dict[int, tuple[int, ...]]:
    """The random k-regular graph: devices on a ring in a seeded random order, each joined to the
    k/2 nearest on either side (a Harary graph relabelled at random); every pair when k = n - 1."""
    devs = sorted(devices)
    if k >= len(devs) - 1:
        return {d: tuple(v for v in devs if v != d) for d in devs}
    ring = sorted(devs, key=lambda d: hashlib.sha256(graph_seed + struct.pack("<I", d)).digest())
    n, half = len(ring), k // 2
    out = {}
    for i, d in enumerate(ring):
        out[d] = tuple(sorted(ring[(i + j) % n] for j in range(-half, half + 1) if j != 0))
    return out


def components(members: Sequence[int], graph: Mapping[int, Sequence[int]]) -> list[set[int]]:
    """The connected parts of the graph restricted to `members` (whose pairwise masks link them)."""
    left, parts = set(members), []
    while left:
        todo = [left.pop()]
        part = set(todo)
        while todo:
            for v in graph[todo.pop()]:
                if v in left:
                    left.discard(v)
                    part.add(v)
                    todo.append(v)
        parts.append(part)
    return parts


def share_x(owner_neighbours: Sequence[int], holder: int) -> int:
    """The x-coordinate of holder's shares of owner's secrets: 1 + its rank among owner's neighbours."""
    return 1 + list(owner_neighbours).index(holder)


def mask_sign(u: int, v: int) -> int:
    """u adds +PRG(s_uv) when u < v and -PRG(s_uv) when u > v, so the pair cancels in the sum."""
    return 1 if u < v else -1


# --- messages ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Keys:
    round_id: int
    device: int
    c_pk: bytes
    s_pk: bytes
    commit: bytes


@dataclass(frozen=True)
class KeyList:
    round_id: int
    keys: Mapping[int, tuple[bytes, bytes, bytes]]   # neighbour -> (c_pk, s_pk, commit)


@dataclass(frozen=True)
class Shares:
    round_id: int
    device: int
    ciphertexts: Mapping[int, bytes]                  # recipient -> ciphertext


@dataclass(frozen=True)
class ShareList:
    round_id: int
    ciphertexts: Mapping[int, bytes]                  # sender -> ciphertext addressed to this device


@dataclass(frozen=True)
class MaskedUpdate:
    round_id: int
    device: int
    payload: bytes                                    # n_params little-endian b-bit integers


@dataclass(frozen=True)
class Unmask:
    round_id: int
    survivors: tuple[int, ...]


@dataclass(frozen=True)
class UnmaskShares:
    round_id: int
    device: int
    self_shares: Mapping[int, tuple[int, bytes]]      # owner (a survivor) -> (x, share of b_owner)
    key_shares: Mapping[int, tuple[int, bytes]]       # owner (a dropout) -> (x, share of s_owner)


# --- key derivation (cryptography) ---------------------------------------------------------------

def _info(setup: Setup, purpose: bytes, *ids: int) -> bytes:
    return PROTOCOL + b"/" + purpose + setup.session + struct.pack(f"<Q{len(ids)}I", setup.round_id, *ids)


def _hkdf(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)


def _agree(sk: X25519PrivateKey, pk: bytes) -> bytes:
    return sk.exchange(X25519PublicKey.from_public_bytes(pk))  # ValueError on a low-order point


def pair_seed(setup: Setup, s_sk: X25519PrivateKey, s_pk_other: bytes, u: int, v: int) -> bytes:
    """The pairwise mask seed of u and v: HKDF-SHA256 of their X25519 secret, bound to session and round."""
    return _hkdf(_agree(s_sk, s_pk_other), _info(setup, b"mask", min(u, v), max(u, v)))


def _share_key(setup: Setup, shared: bytes, sender: int, recipient: int) -> bytes:
    """The AEAD key of sender's shares for recipient, from their X25519 secret (one key per direction)."""
    return _hkdf(shared, _info(setup, b"share", sender, recipient))


def _aad(setup: Setup, sender: int, recipient: int) -> bytes:
    return _info(setup, b"aad", sender, recipient)


def commitment(setup: Setup, device: int, b_seed: bytes) -> bytes:
    return hashlib.sha256(_info(setup, b"self", device) + b_seed).digest()


def _raw_pk(sk: X25519PrivateKey) -> bytes:
    return sk.public_key().public_bytes_raw()


# --- device --------------------------------------------------------------------------------------

class DeviceAbort(Exception):
    """The device stops taking part in this round (it looks like a dropout to the aggregator)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


class Device:
    """One device's side of one round; a new Device per round (fresh keys, fresh seeds)."""

    def __init__(self, device_id: int, *, random_bytes: Callable[[int], bytes] = os.urandom):
        self.id = int(device_id)
        self._random = random_bytes
        self.stage = "setup"
        self.counts: Counter[str] = Counter()
        self._answer: UnmaskShares | None = None
        self._survivors: tuple[int, ...] | None = None

    def _expect(self, stage: str, msg) -> None:
        if self.stage != stage:
            raise self._abort("wrong_stage", f"device {self.id} got {type(msg).__name__} in stage {self.stage}")
        if stage != "setup" and msg.round_id != self.setup.round_id:
            raise self._abort("wrong_round", f"device {self.id} is in round {self.setup.round_id}, "
                                             f"got {type(msg).__name__} for round {msg.round_id}")

    def _abort(self, reason: str, detail: str) -> DeviceAbort:
        self.stage = ABORTED
        self.counts[reason] += 1
        return DeviceAbort(reason, detail)

    def on_setup(self, setup: Setup) -> Keys:
        self._expect("setup", setup)
        if self.id not in setup.devices:
            raise self._abort(NOT_SELECTED, f"device {self.id} is not in round {setup.round_id}")
        try:
            Config(clip=setup.grid.clip, bits=setup.grid.bits, neighbours=setup.k, threshold=setup.t,
                   min_survivors=setup.min_survivors).for_round(len(setup.devices))
        except ValueError as exc:
            raise self._abort("bad_setup", str(exc)) from None
        self.setup = setup
        self.nbrs = setup.neighbours(self.id)
        self._c_sk, self._s_sk = X25519PrivateKey.generate(), X25519PrivateKey.generate()
        self._b = self._random(gridmod.SEED_BYTES)
        self.stage = "keys_sent"
        return Keys(setup.round_id, self.id, _raw_pk(self._c_sk), _raw_pk(self._s_sk), commitment(setup, self.id, self._b))

    def on_key_list(self, msg: KeyList) -> Shares:
        self._expect("keys_sent", msg)
        stranger = sorted(set(msg.keys) - set(self.nbrs))
        if stranger:
            raise self._abort("bad_key", f"key list names devices {stranger} that are not neighbours of {self.id}")
        if len(msg.keys) < self.setup.t:
            raise self._abort("too_few_neighbours", f"{len(msg.keys)} neighbours of device {self.id} sent keys, "
                                                    f"threshold {self.setup.t}")
        mine = {_raw_pk(self._c_sk), _raw_pk(self._s_sk)}
        seen = [pk for keys in msg.keys.values() for pk in keys[:2]]
        if len(set(seen)) != len(seen) or mine & set(seen):
            raise self._abort("bad_key", "two devices announced the same public key")
        self._peer_keys = dict(msg.keys)
        holders = sorted(msg.keys)
        xs = [share_x(self.nbrs, v) for v in holders]
        t, k = self.setup.t, len(self.nbrs)
        # one share per neighbour of the graph (x = 1..k); those of neighbours without keys are dropped
        b_all = shamir.split(self._b, k, t, self._random((t - 1) * len(self._b)))
        s_all = shamir.split(self._s_sk.private_bytes_raw(), k, t, self._random((t - 1) * KEY_BYTES))
        b_shares = [b_all[x - 1][1:] for x in xs]  # a share is [x] + the bytes; x travels on its own
        s_shares = [s_all[x - 1][1:] for x in xs]
        out = {}
        try:
            self._c_shared = {v: _agree(self._c_sk, msg.keys[v][0]) for v in holders}  # used both ways
            for v, x, bs, ss in zip(holders, xs, b_shares, s_shares):
                key = _share_key(self.setup, self._c_shared[v], self.id, v)
                out[v] = ChaCha20Poly1305(key).encrypt(_NONCE, SHARE_PLAIN.pack(self.id, v, x, bs, ss),
                                                       _aad(self.setup, self.id, v))
        except ValueError as exc:  # a low-order public key
            raise self._abort("bad_key", f"key agreement failed: {exc}") from None
        self.stage = "shares_sent"
        return Shares(self.setup.round_id, self.id, out)

    def on_share_list(self, msg: ShareList) -> None:
        """Keep the shares addressed to me; the senders are the neighbours my vector is masked with."""
        self._expect("shares_sent", msg)
        stranger = sorted(set(msg.ciphertexts) - set(self._peer_keys))
        if stranger:
            raise self._abort("bad_key", f"shares from devices {stranger} whose keys device {self.id} never got")
        self._held: dict[int, tuple[int, bytes, bytes]] = {}
        for u, ct in msg.ciphertexts.items():
            try:
                key = _share_key(self.setup, self._c_shared[u], u, self.id)
                owner, recipient, x, bs, ss = SHARE_PLAIN.unpack(
                    ChaCha20Poly1305(key).decrypt(_NONCE, ct, _aad(self.setup, u, self.id)))
            except (InvalidTag, ValueError, struct.error):
                self.counts["share_undecryptable"] += 1
                continue
            if (owner, recipient, x) != (u, self.id, share_x(self.setup.neighbours(u), self.id)):
                self.counts["share_undecryptable"] += 1
                continue
            self._held[u] = (x, bs, ss)
        self._masked_with = sorted(msg.ciphertexts)
        try:
            self._mask_seeds = [self._b] + [
                pair_seed(self.setup, self._s_sk, self._peer_keys[v][1], self.id, v) for v in self._masked_with]
        except ValueError as exc:
            raise self._abort("bad_key", f"key agreement failed: {exc}") from None
        self._mask_signs = [1] + [mask_sign(self.id, v) for v in self._masked_with]
        self.stage = "share_list"

    def masked_update(self, delta: np.ndarray, round_key: bytes | None = None) -> MaskedUpdate:
        """clip -> grid -> masks in one pass (the fused kernel): the vector the aggregator receives."""
        self._expect("share_list", _Local(self.setup.round_id))
        key = self._random(gridmod.ROUND_KEY_BYTES) if round_key is None else round_key
        y = gridmod.encode(delta, self.setup.grid, key, self._mask_seeds, self._mask_signs)
        return self._send(y)

    def mask_vector(self, q: np.ndarray) -> MaskedUpdate:
        """Masks added to a grid vector made by earlier stages (e.g. quantize, then DP noise)."""
        self._expect("share_list", _Local(self.setup.round_id))
        y = np.array(q, dtype=self.setup.grid.dtype, copy=True)
        gridmod.mask(y, self._mask_seeds, self._mask_signs)
        return self._send(y)

    def _send(self, y: np.ndarray) -> MaskedUpdate:
        self._mask_seeds = self._mask_signs = None  # the vector is out: the seeds are not needed any more
        self.stage = "masked_sent"
        return MaskedUpdate(self.setup.round_id, self.id, y.astype(y.dtype.newbyteorder("<"), copy=False).tobytes())

    def on_unmask(self, msg: Unmask) -> UnmaskShares:
        """Reveal b-shares of survivors and s-shares of dropouts; one survivor set per round, ever."""
        if self.stage == "unmasked" and msg.round_id == self.setup.round_id:
            if tuple(msg.survivors) == self._survivors:
                return self._answer  # the same request again (a lost reply): the same answer
            raise self._abort("conflicting_unmask", f"device {self.id} already answered survivors "
                                                    f"{list(self._survivors)}; refusing {list(msg.survivors)}")
        self._expect("masked_sent", msg)
        survivors = tuple(sorted(set(int(d) for d in msg.survivors)))
        if self.id not in survivors:
            raise self._abort("inconsistent_survivors", f"device {self.id} sent its vector but is not listed as a survivor")
        if not set(survivors) <= set(self.setup.devices):
            raise self._abort("inconsistent_survivors", "survivors outside the round's devices")
        if len(survivors) < self.setup.min_survivors:
            raise self._abort("too_few_survivors", f"{len(survivors)} survivors, minimum {self.setup.min_survivors}")
        alive = set(survivors)
        self_shares, key_shares = {}, {}
        for w, (x, bs, ss) in self._held.items():
            if w in alive:
                self_shares[w] = (x, bs)
            else:
                key_shares[w] = (x, ss)
        self._survivors = survivors
        self._answer = UnmaskShares(self.setup.round_id, self.id, self_shares, key_shares)
        self.stage = "unmasked"
        return self._answer


@dataclass(frozen=True)
class _Local:
    round_id: int


# --- server --------------------------------------------------------------------------------------

@dataclass
class Result:
    """What the secure round produced: the exact sum of the survivors' grid vectors, or an abort."""

    round_id: int
    outcome: str                        # "applied" or "abandoned"
    reason: str                         # "" or the abort reason
    detail: str
    survivors: list[int]                # U3: whose vectors are in the sum
    stages: dict[str, list[int]]        # who answered each stage (U1, U2, U3, U4)
    counts: dict[str, int]
    sum: ModularSum | None = None


class ServerRound:
    """The aggregator's side of one round: collects each stage, then advance() closes it.

    stage_timeout (seconds, optional): each stage waits at most that long from its opening
    (`now` passed in, as in fedtiny.rounds); should_advance(now) says when to call advance().
    """

    def __init__(self, setup: Setup, n_params: int, *, stage_timeout: float | None = None, now: float = 0.0):
        if stage_timeout is not None and not (math.isfinite(stage_timeout) and stage_timeout > 0):
            raise ValueError(f"stage timeout must be a positive number of seconds, got {stage_timeout!r}")
        self.stage_timeout = stage_timeout
        self.deadline = None if stage_timeout is None else float(now) + stage_timeout
        self.setup = setup
        self.n_params = int(n_params)
        self.graph = setup.graph
        self.stage = KEYS
        self.counts: Counter[str] = Counter()
        self.reason = self.detail = ""
        self._keys: dict[int, Keys] = {}
        self._shares: dict[int, Shares] = {}
        self._masked: dict[int, tuple[int, int]] = {}  # device -> (length, CRC-32) of the accepted vector
        self._unmask: dict[int, UnmaskShares] = {}
        self.survivors: tuple[int, ...] = ()
        self.sum = ModularSum(self.n_params, setup.grid)
        self.bytes_received = 0  # payload bytes of accepted messages (keys, shares, vectors, unmask answers)

    # -- receiving --
    def _admit(self, msg, stage: str, eligible) -> Verdict | None:
        if msg.round_id != self.setup.round_id:
            return self._count(WRONG_ROUND, f"secure round {self.setup.round_id}: device {msg.device} sent "
                                            f"{type(msg).__name__} for round {msg.round_id}")
        if msg.device not in self.graph:
            return self._count(NOT_SELECTED, f"device {msg.device} is not in round {self.setup.round_id}")
        if self.stage != stage:
            return self._count(WRONG_STAGE, f"{type(msg).__name__} from device {msg.device} in stage {self.stage}")
        if msg.device not in eligible:
            return self._count(NOT_IN_STAGE, f"device {msg.device} did not complete the previous stage")
        return None

    def _count(self, reason: str, detail: str = "") -> Verdict:
        self.counts[reason] += 1
        return Verdict(reason, detail)

    def receive(self, msg) -> Verdict:
        handler = {Keys: self._on_keys, Shares: self._on_shares, MaskedUpdate: self._on_masked,
                   UnmaskShares: self._on_unmask}.get(type(msg))
        if handler is None:
            return self._count("bad_message", f"{type(msg).__name__} is not a device message")
        return handler(msg)

    def _on_keys(self, msg: Keys) -> Verdict:
        v = self._admit(msg, KEYS, self.graph)
        if v is not None:
            return v
        old = self._keys.get(msg.device)
        if old is not None:
            return self._count(DUPLICATE) if old == msg else self._count(
                KEY_CONFLICT, f"device {msg.device} sent a second, different key message")
        if any(len(b) != KEY_BYTES for b in (msg.c_pk, msg.s_pk, msg.commit)) or msg.c_pk == msg.s_pk:
            return self._count(BAD_KEY, f"device {msg.device}: keys and commitment are {KEY_BYTES} bytes, two distinct keys")
        taken = {pk for k in self._keys.values() for pk in (k.c_pk, k.s_pk)}
        if {msg.c_pk, msg.s_pk} & taken:
            return self._count(BAD_KEY, f"device {msg.device} announced a key another device already uses")
        self._keys[msg.device] = msg
        self.bytes_received += 3 * KEY_BYTES
        return self._count(ACCEPTED)

    def _on_shares(self, msg: Shares) -> Verdict:
        v = self._admit(msg, SHARES, self._keys)
        if v is not None:
            return v
        if msg.device in self._shares:
            return self._count(DUPLICATE) if self._shares[msg.device] == msg else self._count(
                KEY_CONFLICT, f"device {msg.device} sent a second, different share message")
        expected = set(self.graph[msg.device]) & set(self._keys)
        if set(msg.ciphertexts) != expected:
            return self._count(SHARE_MISADDRESSED, f"device {msg.device} addressed shares to "
                                                   f"{sorted(msg.ciphertexts)}; its neighbours with keys are {sorted(expected)}")
        if any(len(ct) != SHARE_CIPHER_BYTES for ct in msg.ciphertexts.values()):
            return self._count(BAD_SHARE, f"device {msg.device}: a share ciphertext is not {SHARE_CIPHER_BYTES} bytes")
        self._shares[msg.device] = msg
        self.bytes_received += SHARE_CIPHER_BYTES * len(msg.ciphertexts)
        return self._count(ACCEPTED)

    def _on_masked(self, msg: MaskedUpdate) -> Verdict:
        v = self._admit(msg, MASKED, self._shares)
        if v is not None:
            return v
        # A second vector from a device never reaches the sum, whatever it holds; the checksum only
        # names it: an identical resend is a duplicate, anything else a conflicting update.
        digest = (len(msg.payload), zlib.crc32(msg.payload))
        if msg.device in self._masked:
            return self._count(DUPLICATE) if self._masked[msg.device] == digest else self._count(
                CONFLICTING_UPDATE, f"device {msg.device} sent a second, different masked vector; the first stands")
        try:
            y = self.setup.grid.parse(msg.payload, self.n_params)
        except ValueError as exc:
            return self._count(WRONG_LENGTH, f"device {msg.device}: {exc}")
        self.sum.add(y)
        self._masked[msg.device] = digest
        self.bytes_received += len(msg.payload)
        return self._count(ACCEPTED)

    def _on_unmask(self, msg: UnmaskShares) -> Verdict:
        v = self._admit(msg, UNMASK, self.survivors)
        if v is not None:
            return v
        if msg.device in self._unmask:
            return self._count(DUPLICATE) if self._unmask[msg.device] == msg else self._count(
                BAD_UNMASK, f"device {msg.device} sent a second, different unmask answer")
        alive, u2 = set(self.survivors), set(self._shares)
        for owners, want_alive in ((msg.self_shares, True), (msg.key_shares, False)):
            for owner, (x, share) in owners.items():
                ok = (owner in u2 and msg.device in self.graph[owner] and (owner in alive) == want_alive
                      and x == share_x(self.graph[owner], msg.device) and len(share) == KEY_BYTES)
                if not ok:
                    return self._count(BAD_UNMASK, f"device {msg.device} revealed a share of device {owner} "
                                                   f"that the survivor set does not call for")
        self._unmask[msg.device] = msg
        self.bytes_received += (1 + KEY_BYTES) * (len(msg.self_shares) + len(msg.key_shares))
        return self._count(ACCEPTED)

    # -- closing stages --
    def expected(self) -> set[int]:
        """The devices whose message the current stage waits for."""
        return {KEYS: set(self.graph), SHARES: set(self._keys), MASKED: set(self._shares),
                UNMASK: set(self.survivors)}.get(self.stage, set())

    def answered(self) -> set[int]:
        return set({KEYS: self._keys, SHARES: self._shares, MASKED: self._masked, UNMASK: self._unmask}.get(self.stage, ()))

    def complete(self) -> bool:
        """Everyone expected answered: the caller may advance without waiting for a deadline."""
        return self.stage in PHASES and self.answered() >= self.expected()

    def should_advance(self, now: float) -> bool:
        """True when every expected device answered, or the stage's deadline has passed."""
        return self.complete() or (self.stage in PHASES and self.deadline is not None and now >= self.deadline)

    def advance(self, now: float | None = None):
        """Close the current stage. Returns the next messages ({device: message}, or the Unmask to
        broadcast to the survivors), or a Result after the unmask stage or on abort."""
        if self.stage_timeout is not None and now is not None:
            self.deadline = float(now) + self.stage_timeout  # the next stage's clock starts now
        m = self.setup.min_survivors
        if self.stage == KEYS:
            if len(self._keys) < m:
                return self._abort("too_few_keys", f"{len(self._keys)} devices sent keys, minimum {m}")
            self.stage = SHARES
            return {d: KeyList(self.setup.round_id, {v: (self._keys[v].c_pk, self._keys[v].s_pk, self._keys[v].commit)
                                                     for v in self.graph[d] if v in self._keys}) for d in self._keys}
        if self.stage == SHARES:
            if len(self._shares) < m:
                return self._abort("too_few_shares", f"{len(self._shares)} devices sent shares, minimum {m}")
            self.stage = MASKED
            return {d: ShareList(self.setup.round_id, {u: s.ciphertexts[d] for u, s in self._shares.items()
                                                       if d in s.ciphertexts}) for d in self._shares}
        if self.stage == MASKED:
            if len(self._masked) < m:
                return self._abort("too_few_masked", f"{len(self._masked)} masked vectors arrived, minimum {m}")
            self.survivors = tuple(sorted(self._masked))
            parts = components(self.survivors, self.graph)
            if len(parts) > 1:  # each part's sum would be revealed on its own (sparse graphs only)
                return self._abort("survivors_disconnected", f"dropouts cut the survivors into {len(parts)} groups "
                                   f"(smallest: {sorted(min(parts, key=len))}); unmasking would reveal each group's sum")
            self.stage = UNMASK
            return Unmask(self.setup.round_id, self.survivors)
        if self.stage == UNMASK:
            if len(self._unmask) < m:
                return self._abort("too_few_unmask", f"{len(self._unmask)} survivors answered the unmask request, minimum {m}")
            return self._reconstruct()
        raise ValueError(f"secure round {self.setup.round_id} is {self.stage}: nothing to advance")

    def _abort(self, reason: str, detail: str) -> Result:
        self.stage, self.reason, self.detail = ABORTED, reason, f"round {self.setup.round_id} abandoned: {detail}"
        self.sum = None  # the masked sum is discarded, never decoded
        return self.result()

    def _reconstruct(self) -> Result:
        t, alive, u2 = self.setup.t, set(self.survivors), set(self._shares)
        self_pts: dict[int, dict[int, bytes]] = {}
        key_pts: dict[int, dict[int, bytes]] = {}
        for ans in self._unmask.values():
            for owner, (x, s) in ans.self_shares.items():
                self_pts.setdefault(owner, {})[x] = s
            for owner, (x, s) in ans.key_shares.items():
                key_pts.setdefault(owner, {})[x] = s
        seeds, signs = [], []
        for u in self.survivors:
            pts = self_pts.get(u, {})
            if len(pts) < t:
                return self._abort("cannot_reconstruct", f"{len(pts)} shares of survivor {u}'s self mask, threshold {t}")
            b = self._rebuild(pts, lambda b, u=u: commitment(self.setup, u, b) == self._keys[u].commit)
            if b is None:
                return self._abort("bad_reconstruction", f"survivor {u}'s self-mask seed does not match its commitment")
            seeds.append(b)
            signs.append(1)
        for u in sorted(u2 - alive):
            partners = [v for v in self.graph[u] if v in alive]
            if not partners:
                continue
            pts = key_pts.get(u, {})
            if len(pts) < t:
                return self._abort("cannot_reconstruct", f"{len(pts)} shares of dropout {u}'s mask key, threshold {t}")
            raw = self._rebuild(pts, lambda raw, u=u: _raw_pk(X25519PrivateKey.from_private_bytes(raw)) == self._keys[u].s_pk)
            if raw is None:
                return self._abort("bad_reconstruction", f"dropout {u}'s mask key does not match its public key")
            sk = X25519PrivateKey.from_private_bytes(raw)
            for v in partners:  # v added mask_sign(v, u) * PRG(s_uv)
                seeds.append(pair_seed(self.setup, sk, self._keys[v].s_pk, u, v))
                signs.append(mask_sign(v, u))
        self.sum.unmask(seeds, signs)
        self.stage = DONE
        return self.result()

    def _rebuild(self, pts: Mapping[int, bytes], check: Callable[[bytes], bool]) -> bytes | None:
        """The secret from t of the revealed shares that passes `check` (its commitment or public
        key). Shamir has no integrity of its own: when the lowest t shares fail (a device revealed a
        wrong share), up to REBUILD_TRIES other t-subsets are tried, so one liar cannot sink the round."""
        t, xs = self.setup.t, sorted(pts)
        for i, subset in enumerate(itertools.islice(self._subsets(xs, t), REBUILD_TRIES)):
            secret = shamir.combine([bytes([x]) + pts[x] for x in subset])
            if check(secret):
                if i:
                    self.counts["bad_share_revealed"] += 1
                return secret
        return None

    @staticmethod
    def _subsets(xs: list[int], t: int):
        """The lowest t first; then every t-subset when there are few, else seeded random ones."""
        yield xs[:t]
        if len(xs) == t:
            return
        if math.comb(len(xs), t) <= REBUILD_TRIES:
            yield from (list(c) for c in itertools.islice(itertools.combinations(xs, t), 1, None))
            return
        rng = random.Random(len(xs))  # a public choice of which shares to try, not a secret
        while True:
            yield sorted(rng.sample(xs, t))

    def result(self) -> Result:
        done = self.stage == DONE
        return Result(self.setup.round_id, "applied" if done else "abandoned", self.reason, self.detail,
                      list(self.survivors) if done else [],
                      {KEYS: sorted(self._keys), SHARES: sorted(self._shares), MASKED: sorted(self._masked),
                       UNMASK: sorted(self._unmask)},
                      {k: v for k, v in self.counts.items() if k != ACCEPTED}, self.sum if done else None)
