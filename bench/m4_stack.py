"""Worst-case stack depth of the wire library on a Cortex-M4: the deepest call chain, summed from
GCC's per-function stack usage and call graph (arm-none-eabi-gcc -Os -fcallgraph-info=su, the flags
of `make -C firmware_bridge cortex-m4`).

    python bench/m4_stack.py          # the wire library's deepest chain (frames, HMAC), then the
                                      # secure-aggregation crypto's, then every entry point

Functions outside the library (newlib's memcpy/memset/memmove, the EABI float helpers) count 0
bytes: a firmware links its own. No recursion and no function pointers in the library, so the
call graph is complete (a cycle would be reported as an error)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIRMWARE = os.path.join(ROOT, "firmware_bridge")
WIRE = ("ft_sha256.c", "ft_cobs.c", "ft_frame.c")                                 # Makefile WIRE_SRC
CRYPTO = ("ft_chacha20.c", "ft_hkdf.c", "ft_poly1305.c", "ft_x25519.c", "ft_shamir.c")  # CRYPTO_SRC
SOURCES = WIRE + tuple(f for f in CRYPTO if os.path.exists(os.path.join(FIRMWARE, f)))
FLAGS = ["-std=c99", "-mcpu=cortex-m4", "-mthumb", "-Os", "-ffunction-sections", "-fdata-sections",
         "-fcallgraph-info=su"]
NODE = re.compile(r'node: \{ title: "([^"]+)" label: "([^"]*)"')
EDGE = re.compile(r'edge: \{ sourcename: "([^"]+)" targetname: "([^"]+)"')
BYTES = re.compile(r"\\n(\d+) bytes \((static|dynamic|dynamic,bounded)\)")


def call_graph(cc: str = "arm-none-eabi-gcc"):
    frames: dict[str, tuple[int, str]] = {}
    calls: dict[str, set[str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for src in SOURCES:
            obj = os.path.join(tmp, src.replace(".c", ".o"))
            subprocess.run([cc, *FLAGS, "-c", os.path.join(FIRMWARE, src), "-o", obj], check=True, cwd=tmp)
            text = open(obj[:-2] + ".ci").read()
            for title, label in NODE.findall(text):
                m = BYTES.search(label)
                if m:
                    frames[title] = (int(m.group(1)), m.group(2))
            for a, b in EDGE.findall(text):
                calls.setdefault(a, set()).add(b)
    return frames, calls


def deepest(frames, calls):
    memo: dict[str, tuple[int, list[str]]] = {}

    def walk(f: str, path: tuple[str, ...]) -> tuple[int, list[str]]:
        if f in path:
            raise SystemExit(f"m4_stack.py: error: recursion through {f}: no static bound")
        if f not in memo:
            own = frames.get(f, (0, "external"))[0]
            best = max((walk(g, path + (f,)) for g in calls.get(f, ())), default=(0, []))
            memo[f] = (own + best[0], [f] + best[1])
        return memo[f]
    return {f: walk(f, ()) for f in frames}


def main() -> int:
    cc = shutil.which("arm-none-eabi-gcc")
    if cc is None:
        print("m4_stack.py: error: arm-none-eabi-gcc not found (apt-get install gcc-arm-none-eabi)", file=sys.stderr)
        return 2
    frames, calls = call_graph(cc)
    bad = {f: kind for f, (_, kind) in frames.items() if kind != "static"}
    if bad:
        print(f"m4_stack.py: error: frames that are not static: {bad}", file=sys.stderr)
        return 2
    chains = deepest(frames, calls)
    public = sorted((f for f in chains if "/" not in f), key=lambda f: -chains[f][0])
    name = lambda f: f.rsplit(":", 1)[-1]   # noqa: E731  (static functions are titled path:name)
    wire = [f for f in public if f.startswith("ft_wire_")]
    crypto = [f for f in public if not f.startswith("ft_wire_") and f not in ("ft_session_key",)]

    def chain(f):
        return " -> ".join(f"{name(g)} ({frames.get(g, (0,))[0]})" for g in chains[f][1])
    print(f"deepest stack on Cortex-M4 ({os.path.basename(cc)} -Os): {chains[wire[0]][0]} bytes, {chain(wire[0])}")
    if crypto and crypto[0] != wire[0]:
        print(f"deepest with the secure-aggregation crypto: {chains[public[0]][0]} bytes, {chain(public[0])}")
    for f in public[:10]:
        print(f"  {chains[f][0]:5d}  {name(f)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
