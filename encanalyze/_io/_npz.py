"""Reading ``.npy`` members of a zip (``.npz``) with every size checked before inflating."""

from __future__ import annotations

import math
import zipfile

import numpy as np

__all__ = ["NpzError", "read_member"]


class NpzError(ValueError):
    """A member that is missing, too large, not a plain ``.npy`` array, or inconsistent."""


def read_member(
    z: zipfile.ZipFile, name: str, max_bytes: int, max_header: int = 1 << 16
) -> np.ndarray:
    """Read the ``.npy`` member ``name`` after checking its sizes; never unpickle.

    The member's declared size must be at most ``max_bytes`` and hold what its ``.npy``
    header declares; only then is it inflated (a zip bomb stops at the declared size).
    """
    try:
        info = z.getinfo(name)
    except KeyError:
        raise NpzError(f"member {name!r} is missing") from None
    if info.file_size > max_bytes:
        raise NpzError(
            f"member {name!r} declares {info.file_size} bytes, over the limit of {max_bytes}"
        )
    try:
        return _read(z, info, name, max_header)
    except NpzError:
        raise
    except Exception as err:  # noqa: BLE001 - zip and .npy parsers raise many kinds on bad bytes
        # (NotImplementedError for an unknown compression, tokenize.TokenError for a broken
        # header, zlib.error, EOFError, ...): all are one named error
        text = " ".join(str(err).split())[:120]
        raise NpzError(f"member {name!r} is unreadable ({type(err).__name__}: {text})") from None


def _read(z: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, max_header: int) -> np.ndarray:
    with z.open(info) as f:
        try:
            version = np.lib.format.read_magic(f)
        except ValueError:
            raise NpzError(f"member {name!r} is not a .npy array") from None
        read_header = {
            (1, 0): np.lib.format.read_array_header_1_0,
            (2, 0): np.lib.format.read_array_header_2_0,
        }.get(version)
        if read_header is None:
            raise NpzError(f"member {name!r} has .npy format version {version}")
        shape, fortran, dtype = read_header(f, max_header_size=max_header)
        if dtype.hasobject:
            raise NpzError(f"member {name!r} holds Python objects")
        size = math.prod(shape) * dtype.itemsize
        if size > info.file_size:
            raise NpzError(
                f"member {name!r} declares shape {shape} ({size} bytes) but holds "
                f"{info.file_size} bytes"
            )
        array = np.empty(math.prod(shape), dtype=dtype)
        view, done = memoryview(array.view(np.uint8)), 0
        while done < size:  # read straight into the array: the data is held once
            got = f.readinto(view[done:])
            if not got:
                raise NpzError(f"member {name!r} is truncated")
            done += got
    return array.reshape(shape[::-1]).T if fortran else array.reshape(shape)
