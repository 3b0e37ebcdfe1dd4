"""The aggregator's status page (fedtiny.net.status): /metrics parsed by prometheus_client's
text-format parser against the aggregator's own counters and metrics rows, /status.json, the
per-device table, and hostile HTTP clients (oversized, slow, POST, traversal, a wrong Host, many
connections) while real client processes keep finishing rounds over UDP on 127.0.0.1."""
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from fedtiny.net import status, wire
from netutil import AggregatorThread, Fleet, HandDevice, stop_all, wait_for

parser = pytest.importorskip("prometheus_client.parser")


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, timeout: float = 5.0) -> tuple[int, dict, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def raw(address, data: bytes, timeout: float = 10.0) -> bytes:
    """Send data on one TCP connection; everything the server answers until it closes."""
    with socket.create_connection(address, timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def code_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def families(text: str) -> dict:
    return {f.name: f for f in parser.text_string_to_metric_families(text)}


@pytest.fixture
def live(tmp_path):
    """A real aggregator with --http (its own event loop in a thread) and 3 real client processes."""
    fleet = Fleet(tmp_path, 3)
    cfg = fleet.config(rounds=5000, http=f"127.0.0.1:{free_tcp_port()}")
    with AggregatorThread(cfg) as agg:
        procs = fleet.start_clients(agg.server)
        try:
            yield fleet, agg
        finally:
            stop_all(procs)


def test_metrics_parse_as_prometheus_text_and_match_the_aggregator(live):
    fleet, t = live
    agg = t.agg
    url = agg.status_server.url
    wait_for(lambda: len(agg.metrics) >= 3, 60, "3 rounds")
    # a rejection of known reason and count: 5 datagrams too short to be a frame
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _ in range(5):
            s.sendto(b"\x01\x02\x03", tuple(t.address))
    wait_for(lambda: sum(agg.rejected.values()) >= 5, 10, "the 5 datagrams counted")
    code, headers, body = get(url + "metrics")
    assert code == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    fam = families(body.decode())
    kinds = {name: f.type for name, f in fam.items()}
    assert kinds["fedtiny_frames_rejected"] == "counter" and kinds["fedtiny_rounds_finished"] == "gauge"
    assert kinds["fedtiny_test_accuracy"] == "gauge" and kinds["fedtiny_device_updates_accepted"] == "counter"
    for f in fam.values():
        assert f.documentation, f.name           # every family has its HELP
    rejected = {s.labels["reason"]: s.value for s in fam["fedtiny_frames_rejected"].samples if s.name.endswith("_total")}
    assert sum(rejected.values()) >= 5 and rejected == {k: v for k, v in agg.rejected.items() if k in rejected}
    assert set(rejected) == set(agg.rejected)    # every reason the aggregator counted, none invented
    finished = fam["fedtiny_rounds_finished"].samples[0].value
    rows = agg.metrics
    assert 3 <= finished <= len(rows)            # rounds finish between the scrape and this line, never before
    by_round = {r["round"]: r for r in rows}
    assert fam["fedtiny_test_accuracy"].samples[0].value == pytest.approx(by_round[finished]["test_acc"], abs=0)
    accepted = {s.labels["device"]: s.value for s in fam["fedtiny_device_updates_accepted"].samples
                if s.name.endswith("_total")}
    assert set(accepted) == {"0", "1", "2"} and all(finished <= v <= finished + 1 for v in accepted.values())
    assert fam["fedtiny_rounds_planned"].samples[0].value == 5000
    # the JSON behind the page says the same, and NaN never appears in it (null instead)
    code, headers, body = get(url + "status.json")
    assert code == 200 and headers["Content-Type"] == "application/json"
    snap = json.loads(body, parse_constant=lambda c: pytest.fail(f"{c} in status.json"))
    assert snap["rounds_planned"] == 5000 and snap["rounds_done"] >= finished
    assert [r["round"] for r in snap["rounds"]] == list(range(1, len(snap["rounds"]) + 1))
    assert {d["id"] for d in snap["devices"]} == {0, 1, 2} and all(d["rounds_done"] >= finished for d in snap["devices"])


def test_a_device_rejection_shows_in_its_row_and_no_key_is_ever_shown(live):
    fleet, t = live
    agg = t.agg
    url = agg.status_server.url
    wait_for(lambda: len(agg.metrics) >= 1, 60, "round 1")
    dev = HandDevice(t.address, 4, fleet.keys[4])    # a spare id of the fleet
    try:
        dev.send(dev.hello())                        # joined: its in-session HELLO is authentic
        wait_for(lambda: 4 in agg.devices and agg.devices[4].n_samples == 100, 10, "the hand device's HELLO")
        nonce = b"\x07" * wire.NONCE_BYTES
        dev.send(dev.join_hello(nonce))              # two join HELLOs at once: the second is over the rate
        dev.send(dev.join_hello(nonce))
        wait_for(lambda: agg.devices[4].last_rejection == "hello_rate", 10, "hello_rate on device 4")
    finally:
        dev.close()
    snap = json.loads(get(url + "status.json")[2])
    row = next(d for d in snap["devices"] if d["id"] == 4)
    assert row["last_rejection"] == "hello_rate" and 0 <= row["last_rejection_s"] < 30
    assert row["rounds_done"] == 0 and row["samples"] == 100
    texts = [get(url + p)[2] for p in ("", "status.json", "metrics")]
    secrets = [k for psk in fleet.keys.values() for k in (psk, psk.hex().encode(), psk.hex().upper().encode())]
    secrets += [d.session.key.hex().encode() for d in agg.devices.values() if d.session is not None]
    assert len(secrets) >= 3 * 5 + 4
    for text in texts:
        assert not any(s in text for s in secrets)


def test_hostile_http_clients_are_refused_and_rounds_go_on(live):
    fleet, t = live
    agg = t.agg
    addr = agg.status_server.address
    host = f"127.0.0.1:{addr[1]}".encode()
    wait_for(lambda: len(agg.metrics) >= 1, 60, "round 1")
    before = len(agg.metrics)
    # held connections first: they fill every slot, the next one is answered 503 at once
    held = [socket.create_connection(addr, timeout=10) for _ in range(status.MAX_CONNECTIONS)]
    try:
        time.sleep(0.3)
        t0 = time.monotonic()
        assert code_of(raw(addr, b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")) == 503
        assert time.monotonic() - t0 < 2
        # a slow client (the held ones never finish their request) is cut off with 408
        held[0].sendall(b"GET /status.json HTTP/1.1\r\n")
        held[0].settimeout(status.REQUEST_SECONDS + 5)
        answer = b""
        while chunk := held[0].recv(4096):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 408 "), (answer, agg.status_server.responses)
        assert time.monotonic() - t0 < status.REQUEST_SECONDS + 3
    finally:
        for s in held:
            s.close()
    wait_for(lambda: agg.status_server.active == 0, status.REQUEST_SECONDS + 3, "held connections closed")
    # a burst of 200 connections opened and dropped at once: nothing stays open
    burst = [socket.create_connection(addr, timeout=10) for _ in range(200)]
    for s in burst:
        s.close()
    wait_for(lambda: agg.status_server.active == 0 and not agg.status_server._writers, 10, "the burst cleared")
    cases = [
        (b"GET / HTTP/1.1\r\nHost: " + host + b"\r\nX-Pad: " + b"a" * (2 * status.MAX_REQUEST_BYTES) + b"\r\n\r\n", 431),
        (b"POST /status.json HTTP/1.1\r\nHost: " + host + b"\r\nContent-Length: 5\r\n\r\nhello", 405),
        (b"DELETE / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n", 405),
        (b"GET /../../etc/passwd HTTP/1.1\r\nHost: " + host + b"\r\n\r\n", 404),
        (b"GET /%2e%2e/%2e%2e/etc/passwd HTTP/1.1\r\nHost: " + host + b"\r\n\r\n", 404),
        (b"GET //etc/passwd HTTP/1.1\r\nHost: " + host + b"\r\n\r\n", 404),
        (b"GET /status.json/../keys HTTP/1.1\r\nHost: " + host + b"\r\n\r\n", 404),
        (b"GET http://evil.example/ HTTP/1.1\r\nHost: " + host + b"\r\n\r\n", 404),
        (b"GET /status.json HTTP/1.1\r\nHost: evil.example\r\n\r\n", 403),   # a rebound name
        (b"GET /status.json HTTP/1.1\r\n\r\n", 403),                          # no Host
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),        # TLS, or any garbage
        (b"GET / HTTP/2.0\r\nHost: " + host + b"\r\n\r\n", 400),
    ]
    for request, expected in cases:
        answer = raw(addr, request)
        assert code_of(answer) == expected, (request[:60], answer[:200])
        assert b"root:" not in answer and b"Connection: close" in answer
    # a client that goes away mid-request costs nothing
    with socket.create_connection(addr) as s:
        s.sendall(b"GET / HT")
    # the status server still answers, and counted what it refused
    code, _, body = get(agg.status_server.url + "metrics")
    assert code == 200
    responses = {s.labels["code"]: s.value for s in families(body.decode())["fedtiny_status_responses"].samples
                 if s.name.endswith("_total")}
    assert responses["503"] >= 1 and responses["408"] == status.MAX_CONNECTIONS and responses["431"] == 1
    assert responses["405"] == 2 and responses["404"] == 5 and responses["403"] == 2 and responses["400"] == 2
    # and the federation went on through all of it
    wait_for(lambda: len(agg.metrics) >= before + 3, 60, "3 more rounds after the attacks")


def test_page_is_self_contained_and_locked_down(live):
    _, t = live
    code, headers, body = get(t.agg.status_server.url)
    assert code == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    page = body.decode()
    for needle in ("http://", "https://", "//cdn", "src=", "@import"):
        if needle == "http://":    # the SVG namespace is a name, not a fetch
            page_wo_ns = page.replace("http://www.w3.org/2000/svg", "")
            assert needle not in page_wo_ns
        else:
            assert needle not in page, needle
    csp = headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "'unsafe-inline'" not in csp
    assert csp == status._csp(page)
    assert headers["X-Content-Type-Options"] == "nosniff" and headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("address,public,ok", [
    ("127.0.0.1:0", False, True), ("localhost:8080", False, True), ("[::1]:8080", False, True),
    ("127.8.9.10:80", False, True), ("0.0.0.0:8080", False, False), ("192.168.1.5:80", False, False),
    ("example.org:80", False, False), ("0.0.0.0:8080", True, True), ("[::]:80", False, False),
])
def test_only_loopback_unless_asked(address, public, ok):
    if ok:
        assert status.check_address(address, public)[1] == int(address.rsplit(":", 1)[1])
    else:
        with pytest.raises(ValueError, match="not a loopback address.*--http-public"):
            status.check_address(address, public)


@pytest.mark.parametrize("command", ["aggregate", "demo"])
def test_cli_refuses_a_public_address_in_one_line(tmp_path, command):
    extra = ["--keys", str(tmp_path / "k"), "--state", str(tmp_path / "s")] if command == "aggregate" else []
    proc = subprocess.run([sys.executable, "-m", "fedtiny.cli", command, "--http", "0.0.0.0:8080", *extra],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "0.0.0.0 is not a loopback address" in lines[0] and "--http-public" in lines[0], lines
    assert not (tmp_path / "s").exists()


def test_prometheus_text_escapes_labels_and_writes_nan():
    snap = {"rounds": [{"round": 1, "test_acc": None, "test_loss": None, "train_loss": 1.5}], "current": None,
            "rounds_planned": 2, "rounds_done": 1, "devices": [], "rejected": {'we"ird\\reason\n': 2},
            "clipped": 0, "bytes_up": 1, "bytes_down": 2, "epsilon": 1.25, "epsilon_field": "epsilon"}
    fam = families(status.prometheus_text(snap))
    assert fam["fedtiny_frames_rejected"].samples[0].labels["reason"] == 'we"ird\\reason\n'
    acc = fam["fedtiny_test_accuracy"].samples[0].value
    assert acc != acc     # NaN
    assert fam["fedtiny_dp_epsilon"].samples[0].value == 1.25
    del snap["epsilon"]
    snap["epsilon"] = None
    assert "fedtiny_dp_epsilon" not in families(status.prometheus_text(snap))
