"""What keeps a device process small (docs/layout.md "A device's memory"; the figure itself is
bench/client_rss.py's): the modules `fedtiny client` must not import, and the small pieces that
replace what they were imported for."""
import os
import shutil
import subprocess
import sys

import numpy as np

from fedtiny import cli
from fedtiny.net import client

# stdlib modules a device process used to import for one small thing each: random (one backoff
# draw), zipfile (np.load of its data; with pathlib, urllib.parse, ipaddress), shutil (argparse's
# terminal width; with zlib, bz2, lzma, fnmatch)
NOT_ON_A_DEVICE = {"random", "zipfile", "shutil", "bz2", "lzma", "pathlib", "urllib.parse", "ipaddress", "fnmatch"}


def test_a_device_process_imports_none_of_them(tmp_path):
    data = tmp_path / "d.npz"
    np.savez(data, x=np.zeros((4, 784), np.float32), y=np.arange(4))
    # the real CLI up to argument parsing, then what run_command does before the loop
    code = ("import sys\nstart = set(sys.modules)\n"
            "from fedtiny import cli\n"
            "try:\n    cli.main(['client', '--help'])\nexcept SystemExit:\n    pass\n"
            "from fedtiny import model, train\nfrom fedtiny.net import keys\nfrom fedtiny.net.common import load_data\n"
            f"m = model.build('2nn')\nx, y = load_data({str(data)!r}, m)\n"
            "print('LOADED', ' '.join(sorted(set(sys.modules) - start)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    loaded = set(out.split("LOADED", 1)[1].split())
    assert "fedtiny.net.client" in loaded and "fedtiny.train" in loaded   # the check saw a real client
    # modules the interpreter had loaded before (an editable install's finder imports pathlib) do not count
    assert not loaded & NOT_ON_A_DEVICE, loaded & NOT_ON_A_DEVICE


def test_terminal_width_is_what_shutil_gives(monkeypatch):
    for columns in ("77", "200"):
        monkeypatch.setenv("COLUMNS", columns)
        assert cli._terminal_columns() == shutil.get_terminal_size().columns == int(columns)
    for bad in ("0", "-3", "wide"):
        monkeypatch.setenv("COLUMNS", bad)
        assert cli._terminal_columns() == shutil.get_terminal_size().columns
    monkeypatch.delenv("COLUMNS")
    assert cli._terminal_columns() == shutil.get_terminal_size().columns


def test_help_wraps_at_the_terminal_width():
    env = dict(os.environ, COLUMNS="50")
    out = subprocess.run([sys.executable, "-m", "fedtiny.cli", "client", "--help"], capture_output=True, text=True,
                         timeout=60, env=env, check=True).stdout
    assert 40 < max(len(line) for line in out.splitlines()) <= 48   # argparse wraps at COLUMNS - 2


def test_busy_backoff_is_uniform_in_its_range():
    draws = np.array([client.busy_backoff() for _ in range(4000)])
    assert draws.min() >= 0.1 and draws.max() <= 0.5
    assert abs(draws.mean() - 0.3) < 0.01 and abs(draws.std() - 0.4 / 12 ** 0.5) < 0.01
    assert np.histogram(draws, bins=4, range=(0.1, 0.5))[0].min() > 850   # each quarter ~1000
