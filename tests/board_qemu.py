"""The example firmware on an emulated board: build the mps2-an386 port, provision a device,
boot it in qemu-system-arm with UART0 on a pseudo-terminal, and read the firmware's log lines
(semihosting, qemu's stdout).

Two clocks: with icount=True (-icount shift=0) every instruction is one nanosecond of virtual
time, so the board's busy cycles count instructions exactly; but then the guest's clock runs
slower than the host's (about 0.55x here while bytes arrive), and a line paced in real time looks
faster to the firmware than it is. With icount=False the guest clock is the host's, as a real
board's SysTick is real time: runs that judge the firmware's timers against a paced line use it."""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BOARD_DIR = os.path.join(ROOT, "firmware_bridge", "boards", "mps2-an386")
PROVISION_ADDR = 0x00380000
SYSCLK_HZ = 25_000_000
# -icount shift=0: 1 ns of virtual time per instruction, so one 25 MHz cycle is 40 instructions
INSTRUCTIONS_PER_CYCLE = 1_000_000_000 // SYSCLK_HZ
QEMU = shutil.which("qemu-system-arm")
ARM_CC = shutil.which("arm-none-eabi-gcc")
ROUND_LINE = re.compile(r"fw: round (\d+) done (\d+) rx (\d+) tx (\d+) cycles (\d+) seq (\d+) stack_unused (\d+) "
                        r"rx_dropped (\d+) rejected (\d+) ms (\d+)")
BOOT_LINE = re.compile(r"fw: boot device (\d+) samples (\d+) boot (\d+) baud (\d+)")


def build(out_dir: str, baud: int = 115200) -> str:
    """make the port; the ELF's path."""
    subprocess.run(["make", "-s", "-C", BOARD_DIR, f"BUILD={out_dir}", f"BAUD={baud}"], check=True, timeout=300,
                   capture_output=True)
    return os.path.join(out_dir, "fw.elf")


class Board:
    """qemu-system-arm -M mps2-an386 running elf with a provisioning image; .tty is UART0."""

    def __init__(self, elf: str, image: str, cwd: str, *, icount: bool = True, monitor: bool = False):
        self.monitor_path = os.path.join(cwd, "qemu-monitor.sock") if monitor else None
        cmd = [QEMU, "-M", "mps2-an386", "-nographic"] + (["-icount", "shift=0"] if icount else []) + [
               "-semihosting-config", "enable=on,target=native",
               "-monitor", f"unix:{self.monitor_path},server=on,wait=off" if monitor else "none",
               "-kernel", elf, "-device", f"loader,file={image},addr={PROVISION_ADDR:#x}", "-serial", "pty"]
        self.proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.times: list[float] = []   # time.monotonic() when each line came
        self._changed = threading.Condition()
        first = self.proc.stdout.readline()
        m = re.search(r"char device redirected to (\S+)", first)
        if not m:
            self.proc.kill()
            raise RuntimeError(f"qemu did not open a pty: {first!r} {self.proc.stdout.read()!r}")
        self.tty = m.group(1)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self.times.append(time.monotonic())
                self._changed.notify_all()

    def wait_for(self, pattern: re.Pattern, count: int = 1, timeout: float = 60.0) -> list[re.Match]:
        """The first `count` lines matching pattern (waits for them)."""
        end = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [m for m in map(pattern.search, self.lines) if m]
                if len(found) >= count or self.proc.poll() is not None:
                    return found
                left = end - time.monotonic()
                if left <= 0:
                    return found
                self._changed.wait(left)

    def rounds(self) -> list[dict]:
        keys = ("round", "done", "rx", "tx", "cycles", "seq", "stack_unused", "rx_dropped", "rejected", "ms")
        return [dict(zip(keys, map(int, m.groups()))) for m in map(ROUND_LINE.search, list(self.lines)) if m]

    def monitor(self, command: str) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(self.monitor_path)
            s.recv(4096)   # the banner
            s.sendall(command.encode() + b"\n")
            time.sleep(0.2)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            code = self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._reader.join(5)   # reads to EOF
        self.proc.stdout.close()
        return code

    def log(self) -> str:
        return "\n".join(self.lines)
