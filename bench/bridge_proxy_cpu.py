"""The bridge's CPU per secure round per device, with and without `--secagg-proxy`: the real
`fedtiny aggregate --secagg`, the real `fedtiny bridge` and N processes of the example C
firmware's host build, each on a pseudo-terminal of the bridge (mlp:64-10 on digits, 650
parameters, b = 16, every device in every round).

    python bench/bridge_proxy_cpu.py [--devices 4] [--rounds 10]

Two runs, one after the other, with the same devices and seed:
- relay: `fedtiny bridge` (holds no keys) relays devices built with FW_SECAGG=1 that run SecAgg+
  themselves;
- proxy: `fedtiny bridge --secagg-proxy --keys FILE` runs SecAgg+ for devices built with
  FW_SECAGG=0 (the 32 KB part's image).
The bridge process's CPU (the scheduler's run time of its threads, /proc/PID/task/*/schedstat) is read once its
imports are done and the devices are up, before the aggregator starts, and again after the
aggregator has finished; the difference over rounds x devices is printed, and the ratio.
"""
import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

from fedtiny.net import keys
from fedtiny.net.demo import write_client_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FW = os.path.join(ROOT, "firmware_bridge")
CSRC = os.path.join(ROOT, "csrc")
sys.path.insert(0, os.path.join(FW, "example"))
import provision  # noqa: E402


def build(out: str, secagg: bool) -> str:
    cc = shutil.which(os.environ.get("CC", "gcc")) or shutil.which("cc")
    example = ["fw_device.c", "fw_provision.c", "host_main.c"] + (["fw_secagg.c"] if secagg else [])
    lib = ["ft_sha256.c", "ft_cobs.c", "ft_frame.c", "ft_chacha20.c"] + (
        ["ft_hkdf.c", "ft_poly1305.c", "ft_x25519.c", "ft_shamir.c"] if secagg else [])
    sources = ([os.path.join(FW, "example", f) for f in example] + [os.path.join(FW, f) for f in lib]
               + sorted(os.path.join(d, f) for d in (CSRC, os.path.join(CSRC, "arch"))
                        for f in os.listdir(d) if f.endswith(".c")))
    subprocess.run([cc, "-std=c99", "-O2", "-ffp-contract=off", f"-DFW_SECAGG={int(secagg)}", "-I", CSRC, "-I", FW,
                    "-I", os.path.join(FW, "example"), *sources, "-lm", "-o", out], check=True, timeout=300)
    return out


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of the process, in ns resolution (/proc/PID/task/*/schedstat: the
    scheduler's run time; /proc/PID/stat's utime + stime count 10 ms ticks)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
            total += int(f.read().split()[0])
    return total / 1e9


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(tmp: str, name: str, firmware: str, proxy: bool, args, images: list[str], keyfile: str) -> float:
    port = free_port()
    ptys = [os.openpty() for _ in images]
    bridge_cmd = [sys.executable, "-m", "fedtiny.cli", "bridge", "--server", f"127.0.0.1:{port}"]
    bridge_cmd += ["--secagg-proxy", "--keys", keyfile] if proxy else []
    for _, slave in ptys:
        bridge_cmd += ["--serial", os.ttyname(slave)]
    procs = []
    try:
        bridge = subprocess.Popen(bridge_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        procs.append(bridge)
        for (master, _), image in zip(ptys, images):
            procs.append(subprocess.Popen([firmware, "--fd", str(master), "--provision", image, "--rounds",
                                           str(args.rounds), "--timeout", str(30 * args.rounds + 60)],
                                          pass_fds=(master,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(3.0)   # the bridge's imports, the ports open, the devices' first HELLOs
        if bridge.poll() is not None:
            raise SystemExit(f"{name}: the bridge exited: {bridge.stderr.read()}")
        cpu0 = cpu_seconds(bridge.pid)
        agg = subprocess.run([sys.executable, "-m", "fedtiny.cli", "aggregate", "--listen", f"127.0.0.1:{port}",
                              "--model", "mlp:64-10", "--dataset", "digits", "--rounds", str(args.rounds),
                              "--min-clients", str(len(images)), "--keys", keyfile, "--state",
                              os.path.join(tmp, f"state-{name}"), "--lr", "0.05", "--batch", "10", "--secagg",
                              "--clip-norm", "1", "--round-timeout", "30", "--seed", "0"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             timeout=60 * args.rounds + 120)
        if agg.returncode != 0:
            raise SystemExit(f"{name}: fedtiny aggregate exited with {agg.returncode}: {agg.stderr[-2000:]}")
        cpu1 = cpu_seconds(bridge.pid)
        rows = __import__("json").load(open(os.path.join(tmp, f"state-{name}", "metrics.json")))
        bad = [r for r in rows if r.get("secagg_outcome") != "applied" or r["survivors"] != len(images)]
        if bad:
            raise SystemExit(f"{name}: rounds not applied with every device: {bad}")
        return cpu1 - cpu0
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for master, slave in ptys:
            os.close(master)
            os.close(slave)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fw_sa = build(os.path.join(tmp, "fw_secagg"), True)
        fw_plain = build(os.path.join(tmp, "fw_plain"), False)
        keyfile = os.path.join(tmp, "keys")
        keys.write_keys(keyfile, keys.generate(range(args.devices)))
        psk = keys.load_keys(keyfile)
        images = []
        for k, path in enumerate(write_client_data(tmp, "digits", args.devices, seed=0)):
            with np.load(path) as z:
                blob = provision.image(k, psk[k], z["x"], z["y"])
            images.append(os.path.join(tmp, f"device{k}.bin"))
            with open(images[-1], "wb") as f:
                f.write(blob)
        relay = run(tmp, "relay", fw_sa, False, args, images, keyfile)
        proxy = run(tmp, "proxy", fw_plain, True, args, images, keyfile)
    per = args.rounds * args.devices
    print(f"| bridge | CPU s ({args.rounds} rounds x {args.devices} devices) | ms per round per device |")
    print("|---|---:|---:|")
    print(f"| relay (devices run SecAgg+, FW_SECAGG=1) | {relay:.3f} | {1000 * relay / per:.2f} |")
    print(f"| `--secagg-proxy` (devices FW_SECAGG=0) | {proxy:.3f} | {1000 * proxy / per:.2f} |")
    print(f"proxy / relay: {proxy / relay:.2f}x; the proxy's own work: {1000 * (proxy - relay) / per:.2f} ms "
          f"per round per device")


if __name__ == "__main__":
    main()
