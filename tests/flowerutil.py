"""Real Flower processes on 127.0.0.1 for the tests: a SuperLink, SuperNodes, `flwr run`.

Every process is started in its own session (process group) and stopped by that group, so the
SuperExec and ClientApp processes that Flower spawns stop with it. Ports are chosen free.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

BIN = os.path.dirname(sys.executable)


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


class Federation:
    """A SuperLink and SuperNodes on loopback, the `flwr` CLI pointed at them."""

    def __init__(self, workdir: str):
        self.dir = str(workdir)
        self.home = os.path.join(self.dir, "flwr-home")
        os.makedirs(self.home, exist_ok=True)
        self.env = {**os.environ, "FLWR_HOME": self.home, "FLWR_TELEMETRY_ENABLED": "0",
                    "PATH": BIN + os.pathsep + os.environ.get("PATH", ""),
                    "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
                    "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.2"}
        self.procs: list[tuple[subprocess.Popen, object]] = []
        self.link_port = free_tcp_port()

    def _start(self, name: str, cmd: list[str], env: dict | None = None) -> subprocess.Popen:
        log = open(os.path.join(self.dir, f"{name}.log"), "w")
        p = subprocess.Popen(cmd, env=env or self.env, cwd=self.dir, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
        self.procs.append((p, log))
        return p

    def start_superlink(self) -> None:
        p = self._start("superlink", [os.path.join(BIN, "flower-superlink"), "--insecure", "--host", "127.0.0.1",
                                      "--port", str(self.link_port), "--disable-runtime-dependency-installation"])
        wait_port(self.link_port, 60, p)
        with open(os.path.join(self.home, "config.toml"), "w") as f:
            f.write(f'[superlink]\ndefault = "test"\n\n[superlink.test]\naddress = "127.0.0.1:{self.link_port}"\n'
                    f'insecure = true\n')

    def start_supernodes(self, node_configs: dict[str, str]) -> None:
        """One SuperNode per name with its --node-config, started together, ready when each listens."""
        started = []
        for name, node_config in node_configs.items():
            port = free_tcp_port()
            started.append((self._start(name, [os.path.join(BIN, "flower-supernode"), "--insecure", "--superlink",
                                               f"127.0.0.1:{self.link_port}", "--port", str(port),
                                               "--node-config", node_config]), port))
        for p, port in started:
            wait_port(port, 60, p)

    def start(self, name: str, cmd: list[str]) -> subprocess.Popen:
        return self._start(name, cmd)

    def run(self, app_dir: str, run_config: str, timeout: float) -> subprocess.CompletedProcess:
        """`flwr run APP test --stream`: returns when the run has finished (or after timeout)."""
        return subprocess.run([os.path.join(BIN, "flwr"), "run", app_dir, "test", "--run-config", run_config,
                               "--stream"], env=self.env, cwd=self.dir, capture_output=True, text=True,
                              timeout=timeout)

    def log(self, name: str) -> str:
        with open(os.path.join(self.dir, f"{name}.log")) as f:
            return f.read()

    def stop(self) -> None:
        for p, _log in reversed(self.procs):
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 10
        for p, log in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(p.pid, signal.SIGKILL)   # the group: SuperExec and app processes too
            except ProcessLookupError:
                pass
            p.wait()
            log.close()
