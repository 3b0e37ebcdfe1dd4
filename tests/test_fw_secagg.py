"""The firmware's SecAgg+ stage machine (firmware_bridge/example/fw_secagg.c) computes exactly what
fedtiny/privacy/secagg.py's Device computes: its C build (cffi) takes part in Python ServerRounds
next to Python devices, fed the wire payloads of fedtiny.net.secagg_round; every byte it derives
(keys, commitment, share ciphertexts, pairwise seeds, the masked vector, the unmask answer) is
checked against the Python definitions, and the unmasked sum against the plain sum of the
survivors' grid vectors."""
import contextlib
import os
import struct

import numpy as np
import pytest

cffi = pytest.importorskip("cffi")
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey  # noqa: E402

from fedtiny.net import secagg_round as net  # noqa: E402
from fedtiny.privacy import grid as gridmod  # noqa: E402
from fedtiny.privacy import secagg  # noqa: E402
from fedtiny.seeds import derive_seed  # noqa: E402
from secagg_oracle import centered  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FW = os.path.join(ROOT, "firmware_bridge")
SOURCES = ["example/fw_secagg.c", "ft_sha256.c", "ft_cobs.c", "ft_frame.c", "ft_chacha20.c", "ft_hkdf.c",
           "ft_poly1305.c", "ft_x25519.c", "ft_shamir.c"]
CDEF = """
typedef struct { uint32_t id, round; int stage; ...; uint32_t share_undecryptable; } fw_secagg;
typedef struct { const uint8_t *p; size_t n, pos; } tape;
void tape_init(fw_secagg *sa, uint32_t id, tape *t);
void fw_secagg_clear(fw_secagg *sa);
int fw_secagg_setup(fw_secagg *sa, uint32_t round, const uint8_t *pl, size_t len, uint8_t out[96]);
int fw_secagg_key_list(fw_secagg *sa, const uint8_t *pl, size_t len, uint8_t *out, size_t cap, size_t *out_len);
int fw_secagg_share_list(fw_secagg *sa, const uint8_t *pl, size_t len);
int fw_secagg_prepare(fw_secagg *sa, const float *delta, size_t n);
int fw_secagg_encode(const fw_secagg *sa, const float *delta, size_t first, size_t count,
                     const uint8_t round_key[32], uint8_t *out);
int fw_secagg_unmask(fw_secagg *sa, const uint8_t *pl, size_t len, uint8_t *out, size_t cap, size_t *out_len);
void fw_secagg_round_key(uint32_t seed, uint32_t round, uint32_t device, uint8_t out[32]);
uint32_t fw_derive_seed(const uint32_t *parts, size_t n);
"""
# the test's random source: a tape of bytes the test knows (a board reads its hardware RNG)
TAPE = """
#include <string.h>
#include "fw_secagg.h"
typedef struct { const uint8_t *p; size_t n, pos; } tape;
static int tape_random(void *ctx, uint8_t *out, size_t n) {
    tape *t = (tape *)ctx;
    if (t->pos + n > t->n) return -1;
    memcpy(out, t->p + t->pos, n);
    t->pos += n;
    return 0;
}
void tape_init(fw_secagg *sa, uint32_t id, tape *t) { fw_secagg_init(sa, id, tape_random, t); }
"""


@pytest.fixture(scope="module")
def fw(tmp_path_factory):
    ffi = cffi.FFI()
    ffi.cdef(CDEF)
    ffi.set_source("_fw_secagg_test", TAPE, sources=[os.path.join(FW, s) for s in SOURCES],
                   include_dirs=[FW, os.path.join(FW, "example")],
                   extra_compile_args=["-std=c99", "-O2", "-ffp-contract=off"], libraries=["m"])
    out = tmp_path_factory.mktemp("fwsa")
    lib_path = ffi.compile(tmpdir=str(out), verbose=False)
    import importlib.util
    spec = importlib.util.spec_from_file_location("_fw_secagg_test", lib_path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.ffi, mod.lib


class CDevice:
    """The C stage machine behind the Python message types (payloads as on the wire)."""

    def __init__(self, fw, device_id: int, rng: np.random.Generator):
        self.ffi, self.lib = fw
        self.id = device_id
        self.tape_bytes = rng.bytes(4096)
        self._buf = self.ffi.from_buffer(self.tape_bytes)
        self.tape = self.ffi.new("tape *", {"p": self._buf, "n": len(self.tape_bytes), "pos": 0})
        self.sa = self.ffi.new("fw_secagg *")
        self.lib.tape_init(self.sa, device_id, self.tape)
        self.out = self.ffi.new("uint8_t[]", 4096)
        self.n_out = self.ffi.new("size_t *")

    def on_setup(self, setup: secagg.Setup) -> secagg.Keys:
        pl = net.pack_setup(setup)
        st = self.lib.fw_secagg_setup(self.sa, setup.round_id, pl, len(pl), self.out)
        assert st == 0, st
        self.setup = setup
        return net.parse_keys(setup.round_id, self.id, bytes(self.ffi.buffer(self.out, 96)))

    def on_key_list(self, msg: secagg.KeyList) -> secagg.Shares:
        pl = net.pack_key_list(msg)
        st = self.lib.fw_secagg_key_list(self.sa, pl, len(pl), self.out, 4096, self.n_out)
        assert st == 0, st
        return secagg.Shares(msg.round_id, self.id,
                             net.parse_cipher_list(bytes(self.ffi.buffer(self.out, self.n_out[0])), "SHARES"))

    def on_share_list(self, msg: secagg.ShareList) -> None:
        pl = net.pack_cipher_list(msg.ciphertexts)
        assert self.lib.fw_secagg_share_list(self.sa, pl, len(pl)) == 0

    def masked_update(self, delta: np.ndarray, round_key: bytes, pieces: int = 3) -> secagg.MaskedUpdate:
        d = self.ffi.from_buffer("float[]", delta)
        assert self.lib.fw_secagg_prepare(self.sa, d, delta.size) == 0
        w = self.setup.grid.bits // 8
        out = bytearray(delta.size * w)
        cuts = np.linspace(0, delta.size, pieces + 1).astype(int)   # in slices, as the upload chunks it
        for a, b in zip(cuts, cuts[1:]):
            buf = self.ffi.new("uint8_t[]", max(1, (b - a) * w))
            assert self.lib.fw_secagg_encode(self.sa, d, a, b - a, round_key, buf) == 0
            out[a * w:b * w] = bytes(self.ffi.buffer(buf, (b - a) * w))
        return secagg.MaskedUpdate(self.setup.round_id, self.id, bytes(out))

    def on_unmask(self, msg: secagg.Unmask, expect: int = 0) -> secagg.UnmaskShares | int:
        pl = net.pack_ids(msg.survivors)
        st = self.lib.fw_secagg_unmask(self.sa, pl, len(pl), self.out, 4096, self.n_out)
        if st != 0:
            return st
        return net.parse_unmask_shares(msg.round_id, self.id, bytes(self.ffi.buffer(self.out, self.n_out[0])))

    # what the tape says the device drew (the Python definitions of every derived byte)
    def secrets(self):
        t = self.tape_bytes
        return t[0:32], t[32:64], t[64:96]


def run_round(fw, n, c_ids, *, config, drop_after_shares=(), seed=7, n_params=650, scale=0.02):
    rng = np.random.default_rng(seed)
    setup = secagg.Setup.create(3, range(n), config, random_bytes=rng.bytes)
    server = secagg.ServerRound(setup, n_params)
    devs = {d: CDevice(fw, d, rng) if d in c_ids else secagg.Device(d) for d in range(n)}
    deltas = {d: (rng.standard_normal(n_params) * scale).astype(np.float32) for d in range(n)}
    keys = {d: devs[d].on_setup(setup) for d in range(n)}
    for d in c_ids:   # keys and commitment: X25519 of the drawn secrets, SHA-256 of the self seed
        c_sk, s_sk, b = devs[d].secrets()
        pub = lambda raw: X25519PrivateKey.from_private_bytes(raw).public_key().public_bytes_raw()  # noqa: E731
        assert keys[d].c_pk == pub(c_sk) and keys[d].s_pk == pub(s_sk)
        assert keys[d].commit == secagg.commitment(setup, d, b)
    for k in keys.values():
        assert server.receive(k).accepted
    for d, msg in server.advance().items():
        assert server.receive(devs[d].on_key_list(msg)).accepted
    share_lists = server.advance()
    for d, msg in share_lists.items():
        devs[d].on_share_list(msg)
    for d in range(n):
        if isinstance(devs[d], secagg.Device):   # a Python device decrypted every C share
            assert devs[d].counts["share_undecryptable"] == 0
    alive = [d for d in range(n) if d not in drop_after_shares]
    rkey = {d: gridmod.derived_round_key(seed, 3, d) for d in range(n)}
    for d in alive:
        m = devs[d].masked_update(deltas[d], rkey[d])
        if d in c_ids:   # byte for byte: grid.encode with the seeds Python derives from the C keys
            _, s_sk, b = devs[d].secrets()
            sk = X25519PrivateKey.from_private_bytes(s_sk)
            peers = sorted(share_lists[d].ciphertexts)
            seeds = [b] + [secagg.pair_seed(setup, sk, keys[v].s_pk, d, v) for v in peers]
            signs = [1] + [secagg.mask_sign(d, v) for v in peers]
            want = gridmod.encode(deltas[d], setup.grid, rkey[d], seeds, signs)
            assert m.payload == want.astype(want.dtype.newbyteorder("<")).tobytes()
        assert server.receive(m).accepted
    unmask = server.advance()
    assert isinstance(unmask, secagg.Unmask)
    answers = {}
    for d in alive:
        answers[d] = devs[d].on_unmask(unmask)
        assert server.receive(answers[d]).accepted
    res = server.advance()
    assert res.outcome == "applied", res
    assert "bad_share_revealed" not in res.counts, res.counts   # every revealed share was the right one
    oracle = sum(centered(gridmod.quantize(deltas[d], setup.grid, rkey[d]), setup.grid.bits) for d in alive)
    assert np.array_equal(res.sum.centered(), oracle)
    return devs, unmask, answers, setup


@pytest.mark.parametrize("bits", [16, 32])
def test_c_devices_in_a_python_round_sum_exactly(fw, bits):
    devs, unmask, answers, _ = run_round(fw, 6, {1, 4}, config=secagg.Config(clip=1.0, bits=bits),
                                         drop_after_shares={2})
    for d in (1, 4):   # the dropout's mask-key share, the survivors' self-seed shares: never both
        a = answers[d]
        assert set(a.key_shares) == {2} and 2 not in a.self_shares and d not in a.self_shares
        # the same UNMASK again: 'send the answer already given'; another survivor set: refused
        assert devs[d].on_unmask(unmask) == 1
        assert devs[d].on_unmask(secagg.Unmask(unmask.round_id, unmask.survivors[:-1])) == -13


def test_c_devices_on_a_sparse_graph_with_clipping(fw):
    """k = 4 of 9 devices (the seeded ring), and deltas far outside the clip bound (scale < 1)."""
    run_round(fw, 9, {0, 5, 8}, config=secagg.Config(clip=0.5, neighbours=4), drop_after_shares={3}, scale=1.0)


def test_seeds_and_round_key_match_python(fw):
    ffi, lib = fw
    rng = np.random.default_rng(1)
    for parts in ([5], [1, 2], [0, 0, 0, 0], [9, 3, 2, 3, 7], list(rng.integers(0, 2**32, 5))):
        arr = ffi.new("uint32_t[]", [int(p) for p in parts])
        assert lib.fw_derive_seed(arr, len(parts)) == derive_seed(*[int(p) for p in parts])
    out = ffi.new("uint8_t[32]")
    for seed, rnd, dev in ((0, 1, 0), (12345, 7, 3), (2**31 - 1, 50, 99)):
        lib.fw_secagg_round_key(seed, rnd, dev, out)
        assert bytes(out) == gridmod.derived_round_key(seed, rnd, dev)


def test_hostile_messages_stop_the_c_device_by_name(fw):
    """A key list naming a stranger, a repeated public key, too few neighbours, a share from a
    device without keys, a malformed setup: each returns its status and wipes the round."""
    ffi, lib = fw
    rng = np.random.default_rng(3)
    setup = secagg.Setup.create(1, range(5), secagg.Config(clip=1.0), random_bytes=rng.bytes)
    others = {d: secagg.Device(d) for d in range(1, 5)}
    keys = {d: others[d].on_setup(setup) for d in others}

    def fresh():
        c = CDevice(fw, 0, rng)
        c.on_setup(setup)
        return c

    def key_list(entries):
        return secagg.KeyList(1, entries)

    good = {d: (k.c_pk, k.s_pk, k.commit) for d, k in keys.items()}
    cases = {
        "stranger": ({**good, 9: good[1]}, -6),
        "repeated key": ({**good, 2: (good[1][0], good[2][1], good[2][2])}, -6),
        "too few": ({1: good[1]}, -5),
        "low order": ({**good, 3: (bytes(32), good[3][1], good[3][2])}, -6),
    }
    for name, (entries, status) in cases.items():
        c = fresh()
        pl = b"".join(struct.pack("<I32s32s32s", v, *entries[v]) for v in sorted(entries))
        st = lib.fw_secagg_key_list(c.sa, pl, len(pl), c.out, 4096, c.n_out)
        assert st == status, name
        assert c.sa.stage == 0, name   # wiped: the device is out of this round
    c = fresh()
    shares = c.on_key_list(key_list({d: good[d] for d in (1, 2, 3)}))
    assert set(shares.ciphertexts) == {1, 2, 3}
    pl = net.pack_cipher_list({4: bytes(secagg.SHARE_CIPHER_BYTES)})   # device 4 sent no keys to it
    assert lib.fw_secagg_share_list(c.sa, pl, len(pl)) == -6
    # a tampered ciphertext is counted, not fatal (as share_undecryptable in Python)
    c = fresh()
    c.on_key_list(key_list(good))
    ct = bytearray(bytes(32) + bytes(secagg.SHARE_CIPHER_BYTES - 32))
    pl = net.pack_cipher_list({1: bytes(ct)})
    assert lib.fw_secagg_share_list(c.sa, pl, len(pl)) == 0 and c.sa.share_undecryptable == 1
    # setups this firmware refuses: not selected, even k on a sparse graph broken, too big
    c = CDevice(fw, 0, rng)
    other = secagg.Setup.create(1, range(1, 6), secagg.Config(clip=1.0), random_bytes=rng.bytes)
    pl = net.pack_setup(other)
    assert lib.fw_secagg_setup(c.sa, 1, pl, len(pl), c.out) == -3
    big = secagg.Setup.create(1, range(20), secagg.Config(clip=1.0), random_bytes=rng.bytes)   # k = 19 > 11
    pl = net.pack_setup(big)
    assert lib.fw_secagg_setup(c.sa, 1, pl, len(pl), c.out) == -9
    bad = bytearray(net.pack_setup(setup))
    bad[36:38] = struct.pack("<H", 9)   # t > k
    assert lib.fw_secagg_setup(c.sa, 1, bytes(bad), len(bad), c.out) == -2
    assert lib.fw_secagg_setup(c.sa, 1, bytes(bad[:-1]), len(bad) - 1, c.out) == -1
    # a distributed-DP round (SETUP's dp_bits, byte 41): the firmware has no noise stage, so it
    # must sit the round out rather than send a noise-free vector
    dp = secagg.Setup(setup.round_id, setup.session, setup.devices, setup.k, setup.t, setup.min_survivors,
                      setup.graph_seed, setup.grid, 11, 1.0)
    pl = net.pack_setup(dp)
    assert pl[41] == 11
    c = CDevice(fw, 0, rng)
    assert lib.fw_secagg_setup(c.sa, 1, pl, len(pl), c.out) == -14
    assert c.sa.stage == 0


# --- the host build through `fedtiny bridge`, next to Python clients, in `fedtiny aggregate --secagg` ---

LOSS = dict(drop=0.10, duplicate=0.05, reorder=0.10, seed=3)


@pytest.mark.parametrize("loss", [None, LOSS], ids=["clean", "lossy"])
def test_c_firmware_through_bridge_joins_secure_rounds_with_python_clients(tmp_path, loss):
    """2 C devices (the example firmware's host build, each on a pseudo-terminal of one real
    `fedtiny bridge`) and 2 `fedtiny client` processes run 2 SecAgg+ rounds of `fedtiny aggregate
    --secagg` on 127.0.0.1. Oracle: each round's new model is the old one plus the float64 mean of
    the four devices' grid vectors, computed here from their deltas (the C devices write theirs
    with --dump-delta; the Python clients' are retrained here as the client trains) and the grid
    definition in numpy (secagg_oracle.grid): no fedtiny summation code. "lossy": a relay between
    the bridge and clients and the aggregator drops 10%, duplicates 5% and reorders 10% of the
    datagrams both ways, so the firmware's answers to repeated stage messages and its ACK-driven
    resends of vector chunks are exercised; every device still survives."""
    pytest.importorskip("serial", reason="fedtiny bridge needs pyserial")
    import subprocess
    from fedtiny import model as model_mod
    from fedtiny.net import state
    from fedtiny.net.demo import client_command
    from netutil import CLIENT_ENV, AggregatorThread, Fleet, client_delta, client_logs, stop_all
    from secagg_oracle import clipped_grid
    from serial_fleet import SerialFleet, build_host_firmware
    from udp_relay import LossyRelay

    firmware = build_host_firmware(tmp_path)
    n_c, n_py, rounds, clip = 2, 2, 2, 1.0
    n = n_c + n_py
    fleet = Fleet(tmp_path, n)
    cfg = fleet.config(model="mlp:64-10", rounds=rounds, min_clients=n, secagg=True, clip_norm=clip, codec="int8",
                       round_timeout=30.0, secagg_stage_timeout=8.0, lr=0.05, batch=10)
    procs = []
    relay_counts = {}
    try:
        with AggregatorThread(cfg) as at, contextlib.ExitStack() as stack:
            server = at.server
            if loss is not None:
                relay = stack.enter_context(LossyRelay(at.address, **loss))
                server = f"{relay.addr[0]}:{relay.addr[1]}"
            sf = stack.enter_context(SerialFleet(fleet, firmware, server, range(n_c), rounds, timeout=80,
                                                 device_args=lambda k: ["--dump-delta", str(tmp_path / f"delta{k}")]))
            procs += sf.procs
            for k in range(n_c, n):
                procs.append(subprocess.Popen(client_command(server, k, fleet.keyfile, fleet.data[k], "mlp:64-10"),
                                              env=CLIENT_ENV, cwd=fleet.dir, stdout=subprocess.DEVNULL,
                                              stderr=subprocess.PIPE, text=True))
            at.wait(90)
            if loss is not None:
                relay_counts = dict(relay.counts)
            for p in procs[1:1 + n_c]:
                out, err = p.communicate(timeout=20)
                assert p.returncode == 0, out + err
                assert f"{rounds} round(s)" in out and "secure round status 0" in out, out
            for p in procs[1 + n_c:]:
                assert p.wait(timeout=20) == 0, client_logs(procs[1 + n_c:])
    finally:
        stop_all(procs)
    ck = state.load(os.path.join(fleet.dir, "state"))
    assert ck.round == rounds
    print("\nsecure rounds:", [(r["secagg_resent"], r["secagg_counts"], r["rejected"]) for r in ck.metrics])
    if loss is not None:
        assert relay_counts["dropped"] > 0, relay_counts
    for row in ck.metrics:
        assert row["secagg_outcome"] == "applied" and row["survivors"] == n, row
        assert row["secagg_stages"] == {"keys": n, "shares": n, "masked": n, "unmask": n}, row
    g = gridmod.Grid.for_round(clip, n)
    net_model = model_mod.build("mlp:64-10")
    w = net_model.init(0).astype(np.float32)
    for r in range(1, rounds + 1):
        total = np.zeros(w.size, np.int64)
        for k in range(n):
            if k < n_c:
                delta = np.fromfile(tmp_path / f"delta{k}.r{r}", dtype="<f4")
            else:
                delta = client_delta(net_model, w, fleet.data[k], r, k)
            total += clipped_grid(delta, clip, g.step, g.qmax, gridmod.derived_round_key(0, r, k))
        w = (w.astype(np.float64) + total * g.step / n).astype(np.float32)
    np.testing.assert_allclose(ck.weights, w, rtol=0, atol=2e-6)   # one grid unit / n is ~6e-5 here


def test_one_round_runs_on_a_cortex_m4f(tmp_path):
    """`make m4-bench-secagg` (k = 2, so 3 C devices run a whole round on an emulated Cortex-M4F):
    every stage OK, every share decrypts, the pairwise masks cancel in the sum; the round costs
    about 2k + 2 X25519 (2.43M instructions each, docs/secagg.md) plus little else."""
    import re
    import shutil
    import subprocess
    if shutil.which("arm-none-eabi-gcc") is None or shutil.which("qemu-system-arm") is None:
        pytest.skip("needs arm-none-eabi-gcc and qemu-system-arm")
    proc = subprocess.run(["make", "-s", "-C", FW, f"BUILD={tmp_path}", "BENCH_K=2", "m4-bench-secagg"],
                          capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "failures: 0" in out, out
    total = int(re.search(r"one round, device side: (\d+) instructions", out).group(1))
    assert 6 * 2.3e6 < total < 6 * 2.7e6, out
