"""The status page in a real browser: headless Chromium (Debian's `chromium`) opens the page of a
live `fedtiny demo --http 127.0.0.1:PORT` twice, and the DOM it rendered from /status.json says that
rounds advance, a row per device appears and the accuracy curve has a point per round; then a
screenshot. FEDTINY_STATUS_SCREENSHOT=docs/status-page.png keeps the screenshot (docs/network.md).
Under CI=true a missing chromium fails (tests/ci_policy.py)."""
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from html.parser import HTMLParser

import pytest

from netutil import AggregatorThread, Fleet, free_udp_port, wait_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.slow


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Dom(HTMLParser):
    """What the test reads from the rendered page: texts and attributes by id, device rows."""

    def __init__(self, html: str):
        super().__init__()
        self.attrs: dict[str, dict] = {}
        self.text: dict[str, str] = {}
        self.devices: list[str] = []
        self._open: list[str | None] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.attrs[a["id"]] = a
            self.text.setdefault(a["id"], "")
        if tag == "tr" and "data-device" in a:
            self.devices.append(a["data-device"])
        if tag not in ("meta", "br", "input", "img", "link", "line", "polyline"):
            self._open.append(a.get("id"))

    def handle_endtag(self, tag):
        if tag not in ("meta", "br", "input", "img", "link", "line", "polyline") and self._open:
            self._open.pop()

    def handle_data(self, data):
        for i in self._open:
            if i is not None:
                self.text[i] += data


def chromium(*args: str, profile: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--virtual-time-budget=4000",
                           *args], capture_output=True, text=True, timeout=90)


def status_json(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(url + "status.json", timeout=5) as r:
            return json.load(r)
    except OSError:
        return None


def wait_rounds(url: str, n: int, proc, timeout: float) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        s = status_json(url)
        if s is not None and s["rounds_done"] >= n:
            return s
        time.sleep(0.2)
    raise AssertionError(f"the demo did not reach round {n} in {timeout} s")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
def test_live_page_in_headless_chromium(tmp_path):
    port = free_tcp_port()
    url = f"http://127.0.0.1:{port}/"
    demo = subprocess.Popen([sys.executable, "-m", "fedtiny.cli", "demo", "--clients", "3", "--rounds", "2000",
                             "--http", f"127.0.0.1:{port}", "--port", str(free_udp_port()), "--round-timeout", "20"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        before = wait_rounds(url, 2, demo, 120)
        first = chromium("--dump-dom", url, profile=str(tmp_path / "p1"))
        assert first.returncode == 0, first.stderr[-2000:]
        after_first = status_json(url)
        dom1 = Dom(first.stdout)
        round1 = int(dom1.text["round"])
        # what the page showed lies between the JSON before and after it loaded
        assert before["rounds_done"] <= round1 <= after_first["rounds_done"]
        assert int(dom1.text["rounds"]) == 2000
        assert sorted(dom1.devices) == ["0", "1", "2"]
        # one point per finished round (every round of the demo is evaluated), drawn inside the chart
        assert int(dom1.attrs["acc-curve"]["data-points"]) == round1 >= 2
        pts = [tuple(map(float, p.split(","))) for p in dom1.attrs["acc-curve"]["points"].split()]
        assert len(pts) == round1 and all(0 <= x <= 420 and 0 <= y <= 220 for x, y in pts)
        assert pts == sorted(pts)                    # left to right, round by round
        assert int(dom1.attrs["test-loss-curve"]["data-points"]) == round1
        assert dom1.text["state"].strip() in ("waiting for devices",) or dom1.text["state"].startswith("round ")
        assert dom1.attrs["epsilon-line"].get("hidden") is not None     # no DP in the demo: no ε shown

        wait_rounds(url, round1 + 3, demo, 120)
        second = chromium("--dump-dom", url, profile=str(tmp_path / "p2"))
        dom2 = Dom(second.stdout)
        round2 = int(dom2.text["round"])
        assert round2 >= round1 + 3
        assert int(dom2.attrs["acc-curve"]["data-points"]) == round2
        assert sorted(dom2.devices) == ["0", "1", "2"]

        shot = tmp_path / "status-page.png"
        third = chromium(f"--screenshot={shot}", "--window-size=1000,900", "--hide-scrollbars", url,
                         profile=str(tmp_path / "p3"))
        data = shot.read_bytes()
        assert third.returncode == 0 and data[:8] == b"\x89PNG\r\n\x1a\n"
        assert struct.unpack(">II", data[16:24]) == (1000, 900)
        assert len(data) > 20_000                    # drawn, not a blank page
        keep = os.environ.get("FEDTINY_STATUS_SCREENSHOT")
        if keep:
            shutil.copyfile(shot, keep)
    finally:
        if demo.poll() is None:
            demo.send_signal(signal.SIGTERM)
        try:
            out, err = demo.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            demo.kill()
            out, err = demo.communicate()
    assert f"status page: {url}" in out


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
def test_epsilon_is_shown_when_the_rows_carry_it(tmp_path):
    """A DP run's metrics rows carry the ε spent (the DP pipeline's field): the page shows the last
    one. Written into the live aggregator's rows here, as the DP stage writes it each round."""
    port = free_tcp_port()
    fleet = Fleet(tmp_path, 2)
    with AggregatorThread(fleet.config(rounds=5000, http=f"127.0.0.1:{port}")) as t:
        procs = fleet.start_clients(t.server)
        try:
            wait_for(lambda: len(t.agg.metrics) >= 2, 60, "2 rounds")
            t.loop.call_soon_threadsafe(lambda: t.agg.metrics[-1].update(epsilon=1.25))
            time.sleep(0.2)
            dom = Dom(chromium("--dump-dom", f"http://127.0.0.1:{port}/", profile=str(tmp_path / "p")).stdout)
        finally:
            for p in procs:
                p.terminate()
                p.wait(10)
                p.stderr.close()
    assert dom.attrs["epsilon-line"].get("hidden") is None
    assert dom.text["epsilon"] == "1.250"
    assert dom.text["epsilon-field"] == "(epsilon)"
