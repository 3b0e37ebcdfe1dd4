"""Chunk-wise ingest policy: dying uploads, duplicates and late chunks never bias the average.

Oracle: FedAvg over only the completed devices in numpy float64, from the decoded int8 values.
"""
import numpy as np
import pytest

from fedtiny import codec
from fedtiny.fedavg import Accumulator
from fedtiny.net.ingest import CHUNK_BLOCKS, UpdateIngest, update_chunks

N = 4500  # 36 int8 blocks: 5 chunks, the last one of 4 blocks


def chunks_of(update: codec.Int8Update):
    blocks = bytes(update.blocks)
    step = CHUNK_BLOCKS * codec.BLOCK_BYTES
    return [blocks[i:i + step] for i in range(0, len(blocks), step)]


def make_updates(rng, k, n=N):
    ups = [codec.encode(rng.standard_normal(n).astype(np.float32) * (i + 1), rounding="stochastic", seed=i)
           for i in range(k)]
    weights = [float(rng.integers(10, 500)) for _ in range(k)]
    return ups, weights


def oracle(w0, ups, weights, ids):
    num = sum(weights[i] * ups[i].decode().astype(np.float64) for i in ids)
    return w0.astype(np.float64) + num / sum(weights[i] for i in ids)


def into(acc):
    return lambda device_id, update, weight: acc.add(update, weight)


def applied(acc, w0):
    w = w0.copy()
    acc.apply(w)
    return w


def test_chunk_count_matches_protocol():
    assert update_chunks(128 * 8) == 1
    assert update_chunks(128 * 8 + 1) == 2
    assert update_chunks(199_210) == 195


def test_dead_duplicate_and_late_do_not_bias(rng):
    w0 = rng.standard_normal(N + 7).astype(np.float32)
    ups, weights = make_updates(rng, 5, N + 7)
    acc = Accumulator(N + 7)
    ing = UpdateIngest(acc.n_params, into(acc), slots=8)
    parts = [chunks_of(u) for u in ups]
    assert len(parts[0]) == update_chunks(N + 7) and len(parts[0][-1]) < len(parts[0][0])
    order = [(d, c) for c in range(len(parts[0])) for d in range(5)]
    rng.shuffle(order)
    for d, c in order:
        if d == 3 and c >= 2:          # device 3 dies after two chunks
            continue
        ing.add_chunk(d, weights[d], c, parts[d][c], now=0.0)
        if d == 1:                     # device 1 sends every chunk twice
            assert ing.add_chunk(d, weights[d], c, parts[d][c], now=0.0) == "duplicate"
    assert ing.n_complete == 4 and not ing.is_complete(3)
    stats = ing.close()
    assert stats.committed == [0, 1, 2, 4] and stats.dropped == [3]
    assert acc.total_weight == sum(weights[i] for i in (0, 1, 2, 4))
    with pytest.raises(ValueError, match="round_closed"):   # device 3's late chunk
        ing.add_chunk(3, weights[3], 2, parts[3][2], now=1.0)
    np.testing.assert_allclose(applied(acc, w0), oracle(w0, ups, weights, [0, 1, 2, 4]), rtol=0, atol=2e-5)


def test_commit_order_is_device_id_order_bit_exact(rng):
    """With every update staged, arrival order does not change a single bit of the sum."""
    w0 = rng.standard_normal(N).astype(np.float32)
    ups, weights = make_updates(rng, 4)
    ref = Accumulator(N)
    for i in range(4):
        ref.add(ups[i], weights[i])
    acc = Accumulator(N)
    ing = UpdateIngest(acc.n_params, into(acc), slots=4)
    order = [(d, c) for d in (3, 1, 0, 2) for c in range(update_chunks(N))]
    rng.shuffle(order)
    for d, c in order:
        ing.add_chunk(d, weights[d], c, chunks_of(ups[d])[c], now=0.0)
    ing.close()
    np.testing.assert_array_equal(applied(acc, w0), applied(ref, w0))


def test_slots_bound_memory_and_busy_devices_retry(rng):
    ups, weights = make_updates(rng, 3)
    acc = Accumulator(N)
    ing = UpdateIngest(acc.n_params, into(acc), slots=2, stall_seconds=10.0)
    parts = [chunks_of(u) for u in ups]
    assert ing.add_chunk(0, weights[0], 0, parts[0][0], now=0.0) == "added"
    assert ing.add_chunk(1, weights[1], 0, parts[1][0], now=0.0) == "added"
    assert ing.add_chunk(2, weights[2], 0, parts[2][0], now=1.0) == "busy"
    assert ing.staged_bytes == 2 * codec.wire_size(N)
    for c in range(1, len(parts[0])):           # device 0 completes: its slot frees on demand
        ing.add_chunk(0, weights[0], c, parts[0][c], now=2.0)
    assert ing.add_chunk(2, weights[2], 0, parts[2][0], now=3.0) == "added"
    assert ing.stats.committed == [0]
    # device 1 went silent at t=0: at t=20 its slot is reclaimed for device 2's... a new device
    acc2 = Accumulator(N)
    ing2 = UpdateIngest(N, into(acc2), slots=1, stall_seconds=10.0)
    ing2.add_chunk(1, weights[1], 0, parts[1][0], now=0.0)
    assert ing2.add_chunk(2, weights[2], 0, parts[2][0], now=5.0) == "busy"
    assert ing2.add_chunk(2, weights[2], 0, parts[2][0], now=20.0) == "added"
    assert ing2.stats.dropped == [1]
    assert acc2.total_weight == 0.0


@pytest.mark.parametrize("mutate,reason", [
    (lambda b: b[:-1], "bad_length"),
    (lambda b: np.float32(np.nan).tobytes() + b[4:], "bad_scale"),
    (lambda b: np.float32(-1.0).tobytes() + b[4:], "bad_scale"),
    (lambda b: np.float32(1e37).tobytes() + b[4:], "bad_scale"),  # 127 * d overflows to Inf
    (lambda b: b[:4] + b"\x80" + b[5:], "bad_value"),
])
def test_malformed_chunks_are_refused_untouched(rng, mutate, reason):
    ups, weights = make_updates(rng, 1)
    acc = Accumulator(N)
    ing = UpdateIngest(acc.n_params, into(acc))
    with pytest.raises(ValueError, match=reason):
        ing.add_chunk(0, weights[0], 0, mutate(chunks_of(ups[0])[0]), now=0.0)
    with pytest.raises(ValueError, match="bad_chunk"):
        ing.add_chunk(0, weights[0], 99, chunks_of(ups[0])[0], now=0.0)
    with pytest.raises(ValueError, match="bad_weight"):
        ing.add_chunk(0, float("nan"), 0, chunks_of(ups[0])[0], now=0.0)
    ing.close()
    assert acc.total_weight == 0.0 and not np.any(acc._acc)


def test_a_device_cannot_change_its_weight_mid_upload(rng):
    """n_k is fixed by the first chunk (or the reservation): a later chunk claiming another weight is
    refused, and the update is committed with the first weight."""
    ups, weights = make_updates(rng, 1)
    parts = chunks_of(ups[0])
    acc = Accumulator(N)
    ing = UpdateIngest(N, into(acc))
    assert ing.add_chunk(0, 100.0, 0, parts[0], now=0.0) == "added"
    with pytest.raises(ValueError, match="weight_changed"):
        ing.add_chunk(0, 5000.0, 1, parts[1], now=0.0)
    assert not ing.received(0)[1]                                  # the refused chunk was not staged
    with pytest.raises(ValueError, match="weight_changed"):
        ing.reserve(0, 5000.0, now=0.0)
    assert ing.reserve(1, 50.0, now=0.0)
    with pytest.raises(ValueError, match="weight_changed"):
        ing.add_chunk(1, 51.0, 0, parts[0], now=0.0)
    for c in range(1, len(parts)):
        ing.add_chunk(0, 100.0, c, parts[c], now=0.0)
    ing.close()
    assert acc.total_weight == 100.0


def test_stall_reclaim_is_strictly_after_stall_seconds(rng):
    """A slot is reclaimed only when its device has been silent MORE than stall_seconds: silent for
    exactly stall_seconds it is kept (busy); a moment later it goes."""
    ups, weights = make_updates(rng, 2)
    parts = [chunks_of(u) for u in ups]
    acc = Accumulator(N)
    ing = UpdateIngest(N, into(acc), slots=1, stall_seconds=10.0)
    ing.add_chunk(0, weights[0], 0, parts[0][0], now=2.5)
    assert ing.add_chunk(1, weights[1], 0, parts[1][0], now=12.5) == "busy"        # exactly 10 s
    assert ing.stats.dropped == [] and ing.received(0)[0]
    assert ing.add_chunk(1, weights[1], 0, parts[1][0], now=np.nextafter(12.5, 13)) == "added"
    assert ing.stats.dropped == [0]


def test_duplicate_chunk_is_not_restaged(rng):
    """A chunk index that already arrived is counted as a duplicate and its bytes are ignored, even
    when they differ (a resend must not overwrite what was staged)."""
    ups, weights = make_updates(rng, 2)
    parts = [chunks_of(u) for u in ups]
    acc = Accumulator(N)
    ing = UpdateIngest(N, into(acc))
    ing.add_chunk(0, weights[0], 0, parts[0][0], now=0.0)
    assert ing.add_chunk(0, weights[0], 0, parts[1][0], now=0.0) == "duplicate"
    for c in range(1, len(parts[0])):
        ing.add_chunk(0, weights[0], c, parts[0][c], now=0.0)
    assert ing.add_chunk(0, weights[0], 2, parts[1][2], now=0.0) == "duplicate"    # after completion
    assert ing.stats.duplicates == 2
    ing.close()
    w0 = np.zeros(N, np.float32)
    np.testing.assert_allclose(applied(acc, w0), oracle(w0, ups, weights, [0]), rtol=0, atol=1e-6)


def test_chunk_short_by_whole_blocks_is_refused(rng):
    """A chunk must be exactly its index's size: one block short is whole blocks (check_blocks would
    pass it) and must still be refused, or the missing block would be summed as zeros."""
    ups, weights = make_updates(rng, 1)
    parts = chunks_of(ups[0])
    acc = Accumulator(N)
    ing = UpdateIngest(N, into(acc))
    for index in (0, len(parts) - 1):      # a full chunk and the short last one
        for cut in (codec.BLOCK_BYTES, -codec.BLOCK_BYTES):
            data = parts[index][:-cut] if cut > 0 else parts[index] + parts[index][:codec.BLOCK_BYTES]
            with pytest.raises(ValueError, match="bad_length"):
                ing.add_chunk(0, weights[0], index, data, now=0.0)
    assert not ing.received(0).any()


def test_updates_fold_in_id_order_as_soon_as_lower_ids_are_in(rng):
    """Given the round's devices, a complete update is committed (its slot freed) once every
    lower id is committed; a higher id waits for a lower one. The sum: bit for bit the id-order
    sum, whatever the order the uploads complete in."""
    k = 6
    w0 = rng.standard_normal(N).astype(np.float32)
    ups, weights = make_updates(rng, k)
    ref = Accumulator(N)
    for i in range(k):
        ref.add(ups[i], weights[i])
    want = applied(ref, w0)
    parts = [chunks_of(u) for u in ups]
    for completion in ([0, 1, 2, 3, 4, 5], [2, 0, 1, 5, 3, 4], [5, 4, 3, 2, 1, 0], list(rng.permutation(k))):
        acc = Accumulator(N)
        ing = UpdateIngest(N, into(acc), slots=k, order=range(k))
        staged_at_most = 0
        for d in completion:
            for c in range(len(parts[d])):
                ing.add_chunk(int(d), weights[d], c, parts[d][c], now=0.0)
            lower_pending = [x for x in range(k) if x not in ing.stats.committed and x < d]
            # folded now exactly when every lower id is in
            assert (int(d) in ing.stats.committed) == (not lower_pending), (completion, d)
            staged_at_most = max(staged_at_most, ing.staged_bytes)
        assert ing.stats.committed == list(range(k)), completion       # ascending id, all before the close
        assert ing.staged_bytes == 0
        if completion == [0, 1, 2, 3, 4, 5]:
            assert staged_at_most == 0                                  # in id order: nothing waits
        ing.close()
        np.testing.assert_array_equal(applied(acc, w0), want)


def test_a_missing_lower_id_holds_the_fold_until_the_close(rng):
    ups, weights = make_updates(rng, 4)
    parts = [chunks_of(u) for u in ups]
    acc = Accumulator(N)
    ing = UpdateIngest(N, into(acc), slots=4, order=[0, 1, 2, 3])
    for d in (0, 2, 3):                      # device 1 never completes
        for c in range(len(parts[d])):
            ing.add_chunk(d, weights[d], c, parts[d][c], now=0.0)
    ing.add_chunk(1, weights[1], 0, parts[1][0], now=0.0)
    assert ing.stats.committed == [0] and ing.n_staged_complete == 2
    stats = ing.close()
    assert stats.committed == [0, 2, 3] and stats.dropped == [1]
    assert acc.total_weight == weights[0] + weights[2] + weights[3]


@pytest.mark.parametrize("fmt,up_codec", [("int4", 4), ("int2", 2), ("1bit-rot", 1)])
def test_sub_byte_uploads_stage_and_commit_like_int8(rng, fmt, up_codec):
    """The same policy for every upload codec (the Python reference path, --ingest python): chunks
    of the codec's size in any order, a dead upload dropped, a wrong-size or off-grid chunk refused
    by reason; the sum is FedAvg of the complete updates in float64 from their decoded values."""
    from fedtiny.net import wire
    from fedtiny.net.ingest import Staging
    n = 20_000   # int4: 10 chunks, int2: 5, rotated 1-bit: 3 (40 blocks of 512)
    w0 = rng.standard_normal(n).astype(np.float32)
    ups = [codec.encode_lowbit(rng.standard_normal(n).astype(np.float32) * (i + 1), fmt, seed=i) for i in range(4)]
    weights = [float(rng.integers(10, 500)) for _ in range(4)]
    acc = Accumulator(n)
    ing = UpdateIngest(n, into(acc), staging=Staging(n, 4, up_codec))
    parts = [[wire.update_chunk(u.blocks, c, up_codec) for c in range(wire.update_chunks(n, up_codec))] for u in ups]
    assert ing.n_chunks == len(parts[0]) and sum(map(len, parts[0])) == len(ups[0].blocks)
    with pytest.raises(ValueError, match="bad_length"):      # an int8-sized chunk in this round
        ing.add_chunk(0, weights[0], 0, bytes(CHUNK_BLOCKS * codec.BLOCK_BYTES), now=0.0)
    if fmt != "1bit-rot":                                      # a code off the grid (every r1 bit is a value)
        bad = bytearray(parts[0][0])
        bad[4] = 0x80 if fmt == "int4" else 0x03
        with pytest.raises(ValueError, match="bad_value"):
            ing.add_chunk(0, weights[0], 0, bytes(bad), now=0.0)
    order = [(d, c) for c in range(len(parts[0])) for d in range(4)]
    rng.shuffle(order)
    for d, c in order:
        if d == 2 and c >= 1:                                  # device 2 dies after one chunk
            continue
        ing.add_chunk(d, weights[d], c, parts[d][c], now=0.0, flags=ups[d].flags, seed=ups[d].seed)
    stats = ing.close()
    assert stats.committed == [0, 1, 3] and stats.dropped == [2]
    np.testing.assert_allclose(applied(acc, w0), oracle(w0, ups, weights, [0, 1, 3]), rtol=0, atol=2e-5)
