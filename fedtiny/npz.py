"""Arrays of an .npz file (np.savez / np.savez_compressed) for a device process, without zipfile.

np.load imports zipfile, and zipfile imports pathlib, shutil, bz2, lzma and urllib.parse: about
1.3 MB of RSS in a process that holds nothing else of them (docs/layout.md "A device's memory").
This reader takes the members with the zip reader the interpreter loaded at start-up for zip
imports (`zipimport.zipimporter.get_data`, stored or deflated members) and parses each .npy
header with numpy's own parser (numpy.lib.format, loaded with numpy). Each array is a read-only
view of its member's bytes: the data is read once, into the buffer the caller keeps.

np.load is the oracle (tests/test_npz.py). Not supported, each with a ValueError naming it:
object arrays (pickles), .npy format version 3 (UTF-8 field names of structured dtypes), and
ZIP64 archives (members over 4 GiB). The members' CRC-32 is not checked (np.load checks it).
"""
from __future__ import annotations

import io
import zipimport

import numpy as np
from numpy.lib import format as npy_format

_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")   # a local file header; an empty archive's end record


def read(path: str, names: tuple[str, ...] | list[str], optional: tuple[str, ...] | list[str] = ()) -> dict[str, np.ndarray]:
    """{name: array} for every name (a ValueError if one is missing) and each optional name the
    file holds, as np.load(path, allow_pickle=False)[name] gives them (read-only)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    if head not in _ZIP_MAGIC:
        raise ValueError(f"cannot read {path}: not an .npz file (save it with np.savez(path, x=..., y=...))")
    try:
        archive = zipimport.zipimporter(path)
        archive.invalidate_caches()   # zipimport caches a directory per path: read this file's as it is now
    except (zipimport.ZipImportError, OSError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    out = {}
    for name in (*names, *optional):
        try:
            data = archive.get_data(f"{name}.npy")
        except OSError:
            if name in optional:
                continue
            raise ValueError(f"{path} must hold arrays {', '.join(repr(n) for n in names)} "
                             f"(np.savez(path, {', '.join(f'{n}=...' for n in names)})); it has no {name!r}") from None
        except (zipimport.ZipImportError, EOFError) as exc:
            raise ValueError(f"cannot read {path}: member {name}.npy: {exc}") from None
        out[name] = _array(path, name, data)
    return out


def _array(path: str, name: str, data: bytes) -> np.ndarray:
    f = io.BytesIO(data)
    try:
        version = npy_format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = npy_format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = npy_format.read_array_header_2_0(f)
        else:
            raise ValueError(f".npy format version {version[0]}.{version[1]} is not read here; save with numpy's default")
    except ValueError as exc:
        raise ValueError(f"cannot read {path}: array {name!r}: {exc}") from None
    if dtype.hasobject:
        raise ValueError(f"cannot read {path}: array {name!r} holds Python objects (dtype {dtype}); "
                         f"save numeric arrays")
    count = 1
    for d in shape:
        count *= int(d)
    offset = f.tell()
    if len(data) - offset < count * dtype.itemsize:   # bytes after the array are ignored, as np.load does
        raise ValueError(f"cannot read {path}: array {name!r} of shape {shape} and dtype {dtype} needs "
                         f"{count * dtype.itemsize} bytes, the file holds {len(data) - offset}")
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    return flat.reshape(shape, order="F" if fortran else "C")
