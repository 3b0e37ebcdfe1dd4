"""Peak RSS of the real device program, `fedtiny client`, over two rounds of the 2nn against a
real `fedtiny aggregate` on 127.0.0.1: 600 Fashion-MNIST training images, batch 10, lr 0.05.

    python bench/client_rss.py [--rounds 2] [--samples 600] [--weights float32|int8] [--page-cache reread|as-is]

Prints one line of JSON. The peak is the kernel's ru_maxrss of the client process (os.wait4),
in KiB, also shown in MiB (1 MiB = 1,048,576 bytes) and MB (1,000,000 bytes). Linux carries a
parent's peak into a forked child's ru_maxrss, so this launcher imports neither numpy nor
fedtiny: the data and the key are prepared in a separate process first.

What the peak is made of, sampled from /proc/PID/status every 50 ms while the client runs (the
sample with the largest VmRSS): RssAnon, the memory the process allocated itself (Python's heap,
numpy arrays, the model, the data), and RssFile, the pages of its executable and shared
libraries it has mapped (libpython, numpy's extension and OpenBLAS). File pages are clean copies
of files in the page cache: how many of them a process maps depends on what the page cache holds
(the kernel maps up to 16 cached neighbours of each page touched), so RssFile, and with it the
peak, moves by several MiB between runs while RssAnon repeats within a few KiB. The largest
swing: files pip has just written are mapped ~6 MiB larger than the same files read back from
disk (measured on the development VM, Linux 6.18). So by default the launcher first drops those
files from the page cache (--page-cache reread): the aggregator and the client then read them
from disk, as a device does after a boot.
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

PREPARE = """
import json, os, sys, sysconfig
import _cffi_backend
import numpy as np
import fedtiny
from fedtiny import datasets
from fedtiny.net import keys
out, n = sys.argv[1], int(sys.argv[2])
data = datasets.load("fashion-mnist")
np.savez(os.path.join(out, "client0.npz"), x=data.x_train[:n], y=data.y_train[:n])
with open(os.open(os.path.join(out, "fleet.keys"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
    f.write(keys.generate([0]))
# the files a client process maps: the interpreter, its extension modules, numpy (and the
# libraries its wheel bundles beside it), fedtiny, cffi's backend
numpy_dir = os.path.dirname(np.__file__)
paths = [os.path.realpath(sys.executable), sysconfig.get_config_var("DESTSHARED") or "", numpy_dir,
         numpy_dir + ".libs", os.path.dirname(fedtiny.__file__), _cffi_backend.__file__]
if sysconfig.get_config_var("Py_ENABLE_SHARED"):
    paths.append(os.path.join(sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("LDLIBRARY")))
print(json.dumps([p for p in paths if p and os.path.exists(p)]))
"""


def drop_from_page_cache(paths: list[str]) -> int:
    """posix_fadvise(DONTNEED) on these files and the shared objects under these folders: the
    kernel forgets their cached pages (clean, unmapped ones only: nothing else is affected), so
    the aggregator and the client read them from disk again, as on a device after boot."""
    files = []
    for p in paths:
        if os.path.isdir(p):
            files += [os.path.join(d, f) for d, _s, fs in os.walk(p) for f in fs if ".so" in f]
        else:
            files.append(p)
    dropped = 0
    for f in files:
        try:
            fd = os.open(f, os.O_RDONLY)
        except OSError:   # not readable by this user: left as it is
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            dropped += 1
        finally:
            os.close(fd)
    return dropped


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon, RssFile (KiB) of a running process; {} once it has gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in f)
                    if k in ("VmRSS", "RssAnon", "RssFile")}
    except (OSError, ValueError):
        return {}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--samples", type=int, default=600)
    ap.add_argument("--weights", choices=["float32", "int8"], default="float32")
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--page-cache", choices=["reread", "as-is"], default="reread",
                    help="reread (default): drop the interpreter's, numpy's and fedtiny's files from the page "
                         "cache first, so they are read from disk as after a boot; as-is: whatever the cache "
                         "holds (just after pip wrote them, the client maps several MiB more of their pages)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        prep = subprocess.run([sys.executable, "-c", PREPARE, tmp, str(a.samples)], check=True, timeout=120,
                              stdout=subprocess.PIPE, text=True)
        if a.page_cache == "reread":
            drop_from_page_cache(json.loads(prep.stdout.strip().splitlines()[-1]))
        data_path, keyfile = os.path.join(tmp, "client0.npz"), os.path.join(tmp, "fleet.keys")
        port = free_port()
        agg = subprocess.Popen([sys.executable, "-m", "fedtiny.cli", "aggregate", "--listen", f"127.0.0.1:{port}",
                                "--model", "2nn", "--rounds", str(a.rounds), "--min-clients", "1",
                                "--round-timeout", "60", "--keys", keyfile, "--state", os.path.join(tmp, "state"),
                                "--dataset", "none", "--epochs", "1", "--batch", "10", "--lr", "0.05"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)
        t0 = time.monotonic()
        cli = subprocess.Popen([sys.executable, *(os.environ["RSS_PROBE"].split() if os.environ.get("RSS_PROBE") else ["-m", "fedtiny.cli"]), "client", "--server", f"127.0.0.1:{port}",
                                "--device-id", "0", "--key", keyfile, "--data", data_path, "--model", "2nn",
                                "--weights", a.weights, "--rounds", str(a.rounds)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        status, sample = None, {}
        while time.monotonic() - t0 < a.timeout:
            now = proc_status(cli.pid)
            if now.get("VmRSS", 0) > sample.get("VmRSS", 0):
                sample = now
            pid, status, usage = os.wait4(cli.pid, os.WNOHANG)
            if pid:
                break
            time.sleep(0.05)
        else:
            cli.kill()
            agg.kill()
            raise SystemExit(f"client did not finish {a.rounds} rounds in {a.timeout} s")
        cli.returncode = os.waitstatus_to_exitcode(status)
        agg.terminate()
        agg.wait(timeout=30)
        if cli.returncode != 0:
            raise SystemExit(f"client exited with {cli.returncode}: {cli.stderr.read()[-500:]}")
        if os.environ.get("RSS_PROBE"):
            print(cli.stderr.read()[-3000:], file=sys.stderr)
        kib = usage.ru_maxrss
        print(json.dumps({"program": "fedtiny client", "model": "2nn", "rounds": a.rounds, "samples": a.samples,
                          "weights": a.weights, "page_cache": a.page_cache, "peak_rss_kib": kib, "peak_rss_mib": round(kib / 1024, 1),
                          "peak_rss_mb": round(kib * 1024 / 1e6, 1),
                          "sampled_peak_kib": {k: sample.get(k) for k in ("VmRSS", "RssAnon", "RssFile")},
                          "wall_s": round(time.monotonic() - t0, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
