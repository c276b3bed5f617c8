"""Sizes a file declares, checked before anything is allocated: by the bytes the file holds and by memory.

Every reader calls `check_declared_size` with the shape its header declares, before it decodes or
copies a pixel: a header that claims 100000 x 100000 x 59 values in a file of a few kilobytes, or a cube
larger than the memory this machine has free, ends in one line naming the file instead of an
allocation error (or a swap storm) later.
"""
import os

import numpy as np

from ubf.core.errors import UserError

# Largest expansion each TIFF/HDF5 compression can give (output bytes per stored byte), so a compressed
# file is bounded by its size too: deflate at most ~1032:1 (RFC 1951's longest match per 2-3 bits);
# LZW codes of >= 9 bits each emit at most 4094 bytes; PackBits two bytes for 128.
MAX_EXPANSION = {"none": 1.0, "deflate": 1100.0, "lzw": 4094 * 8 / 9 + 1, "packbits": 64.0}


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.2f} {unit}"
        count /= 1024.0
    return f"{count:.2f} TiB"


def available_memory() -> int | None:
    """Bytes of memory available now (Linux MemAvailable, else free physical pages), None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def shape_text(shape) -> str:
    return " x ".join(str(int(s)) for s in shape) if len(shape) else "a scalar"


def check_declared_size(path: str, shape, dtype, stored_bytes: int | None = None, expansion: float | None = 1.0,
                        extra_bytes_per_value: int = 4, memory: bool = True) -> int:
    """Refuse a declared array that the file cannot hold or memory cannot take; return its byte count.

    `stored_bytes`: the bytes of pixel data the file actually holds (None: unknown); `expansion`: the
    most a byte of it can decode to (None: no bound from the file, e.g. an unknown codec). The memory
    bound counts the decoded array plus the float32 copy the readers make (`extra_bytes_per_value`);
    `memory=False` skips it for arrays read window by window.
    """
    shape = tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise UserError(f"{path}: declares a negative size ({shape_text(shape)})")
    count = int(np.prod(shape, dtype=object)) if shape else 1
    itemsize = np.dtype(dtype).itemsize
    needed = count * itemsize
    described = f"{shape_text(shape)} {np.dtype(dtype).name} values ({human_bytes(needed)})"
    if stored_bytes is not None and expansion is not None and needed > stored_bytes * expansion + 4096:
        raise UserError(f"{path}: declares {described} but holds only {human_bytes(stored_bytes)} of data; "
                        "a damaged or crafted header")
    free = available_memory() if memory else None
    total = needed + count * extra_bytes_per_value
    if free is not None and total > free:
        raise UserError(f"{path}: declares {described}; reading it needs {human_bytes(total)}, more than the "
                        f"{human_bytes(free)} of memory available")
    return needed
