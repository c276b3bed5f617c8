"""A small reader for multi-band TIFFs (HSRS-SC's 48-band cubes), which Pillow cannot open.

Baseline TIFF and BigTIFF, strips or tiles, chunky or planar samples, uncompressed, LZW, Deflate or
PackBits. `read_tiff_cube(path) -> (H, W, C)`; `read_tiff_pages(path)` gives the tags only.
"""
import zlib

import numpy as np

from ubf.core.errors import UserError

TIFF_EXTENSIONS = (".tif", ".tiff")

_TIFF_VALUE_TYPES = {1: "u1", 2: "u1", 3: "u2", 4: "u4", 5: "u4", 6: "i1", 7: "u1", 8: "i2", 9: "i4",
                     10: "i4", 11: "f4", 12: "f8", 13: "u4", 16: "u8", 17: "i8", 18: "u8"}
_TIFF_SAMPLE_TYPES = {(1, 8): "u1", (1, 16): "u2", (1, 32): "u4", (2, 8): "i1", (2, 16): "i2",
                      (2, 32): "i4", (3, 32): "f4", (3, 64): "f8"}


def _tiff_pages(path: str, buf: bytes) -> tuple[str, list[dict]]:
    """Byte order and the tag dictionaries (tag -> 1-D array) of every page (IFD) of a TIFF."""
    order = {b"II": "<", b"MM": ">"}.get(buf[:2])
    if order is None or len(buf) < 16:
        raise UserError(f"{path}: not a TIFF file (starts with {buf[:4]!r})")

    def number(fmt: str, at: int) -> int:
        return int(np.frombuffer(buf, order + fmt, 1, at)[0])

    magic = number("u2", 2)
    if magic not in (42, 43):
        raise UserError(f"{path}: not a TIFF file (version {magic}, expected 42 or 43)")
    big = magic == 43
    word, count_fmt, entry_size = (8, "u8", 20) if big else (4, "u4", 12)
    offset, pages, seen = number("u8" if big else "u4", 8 if big else 4), [], set()
    while offset and offset not in seen and len(pages) < 100000:
        seen.add(offset)
        n_entries = number("u8" if big else "u2", offset)
        start = offset + (8 if big else 2)
        tags = {}
        for i in range(n_entries):
            at = start + i * entry_size
            tag, kind, count = number("u2", at), number("u2", at + 2), number(count_fmt, at + 4)
            if kind not in _TIFF_VALUE_TYPES:
                continue
            dtype = np.dtype(order + _TIFF_VALUE_TYPES[kind])
            n_values = count * (2 if kind in (5, 10) else 1)
            data_at = at + 4 + word
            if n_values * dtype.itemsize > word:
                data_at = number("u8" if big else "u4", data_at)
            tags[tag] = np.frombuffer(buf, dtype, n_values, data_at)
        pages.append(tags)
        offset = number("u8" if big else "u4", start + n_entries * entry_size)
    return order, pages


def _lzw_decode(data: bytes) -> bytes:
    """TIFF LZW (MSB-first codes of 9 to 12 bits, clear 256, end 257, 'early change')."""
    table = [bytes([i]) for i in range(256)] + [b"", b""]
    out, previous, width, position = bytearray(), b"", 9, 0
    total_bits = len(data) * 8
    padded = bytes(data) + b"\0\0\0\0"
    while position + width <= total_bits:
        at = position >> 3
        code = (int.from_bytes(padded[at:at + 4], "big") >> (32 - (position & 7) - width)) & ((1 << width) - 1)
        position += width
        if code == 257:
            break
        if code == 256:
            del table[258:]
            width, previous = 9, b""
            continue
        if not previous:
            entry = table[code]
        else:
            if code < len(table):
                entry = table[code]
                table.append(previous + entry[:1])
            elif code == len(table):
                entry = previous + previous[:1]
                table.append(entry)
            else:
                raise ValueError("corrupt LZW data")
            if len(table) + 1 >= (1 << width) and width < 12:
                width += 1
        out += entry
        previous = entry
    return bytes(out)


def _packbits_decode(data: bytes) -> bytes:
    out, i = bytearray(), 0
    while i < len(data):
        header = data[i]
        i += 1
        if header < 128:
            out += data[i:i + header + 1]
            i += header + 1
        elif header > 128:
            out += data[i:i + 1] * (257 - header)
            i += 1
    return bytes(out)


def _tiff_tag(tags: dict, tag: int, default=None):
    if tag in tags:
        return tags[tag]
    if default is None:
        raise KeyError(tag)
    return np.atleast_1d(default)


def _tiff_page_array(path: str, buf: bytes, order: str, tags: dict) -> np.ndarray:
    """Decode one TIFF page to (samples, H, W) in its stored dtype."""
    try:
        width, height = int(_tiff_tag(tags, 256)[0]), int(_tiff_tag(tags, 257)[0])
    except KeyError:
        raise UserError(f"{path}: TIFF page without image size") from None
    samples = int(_tiff_tag(tags, 277, 1)[0])
    bits, formats = set(_tiff_tag(tags, 258, 1).tolist()), set(_tiff_tag(tags, 339, 1).tolist())
    compression, predictor = int(_tiff_tag(tags, 259, 1)[0]), int(_tiff_tag(tags, 317, 1)[0])
    planar = int(_tiff_tag(tags, 284, 1)[0])
    if len(bits) != 1 or len(formats) != 1 or (min(formats), min(bits)) not in _TIFF_SAMPLE_TYPES:
        raise UserError(f"{path}: TIFF samples of {sorted(bits)} bits, format {sorted(formats)} are not supported "
                        "(expected 8/16/32-bit integers or 32/64-bit floats)")
    dtype = np.dtype(order + _TIFF_SAMPLE_TYPES[(min(formats), min(bits))])
    decoders = {1: bytes, 5: _lzw_decode, 8: zlib.decompress, 32946: zlib.decompress, 32773: _packbits_decode}
    if compression not in decoders:
        raise UserError(f"{path}: TIFF compression {compression} is not supported "
                        "(expected none, LZW, Deflate or PackBits)")
    if predictor not in (1, 2):
        raise UserError(f"{path}: TIFF predictor {predictor} is not supported (expected none or horizontal)")
    per_chunk = 1 if planar == 2 else samples
    if 322 in tags:  # tiled
        block_w, block_h = int(tags[322][0]), int(tags[323][0])
        offsets, counts = tags[324], tags[325]
    else:
        block_w, block_h = width, min(height, int(_tiff_tag(tags, 278, height)[0]))
        offsets, counts = tags[273], tags[279]
    across, down = -(-width // block_w), -(-height // block_h)
    if len(offsets) < (samples if planar == 2 else 1) * across * down:
        raise UserError(f"{path}: TIFF has {len(offsets)} strips/tiles, fewer than its size needs")
    out = np.empty((samples, height, width), dtype.newbyteorder("="))
    index = 0
    for plane in range(samples if planar == 2 else 1):
        for i in range(down):
            for j in range(across):
                raw = decoders[compression](buf[int(offsets[index]):int(offsets[index]) + int(counts[index])])
                index += 1
                rows = block_h if 322 in tags else min(block_h, height - i * block_h)
                block = np.frombuffer(raw, dtype, rows * block_w * per_chunk).reshape(rows, block_w, per_chunk)
                block = block.astype(dtype.newbyteorder("="))
                if predictor == 2:
                    block = np.cumsum(block, axis=1, dtype=block.dtype)
                r0, c0 = i * block_h, j * block_w
                r1, c1 = min(height, r0 + rows), min(width, c0 + block_w)
                target = slice(plane, plane + 1) if planar == 2 else slice(None)
                out[target, r0:r1, c0:c1] = block[:r1 - r0, :c1 - c0].transpose(2, 0, 1)
    return out


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None


def read_tiff_pages(path: str) -> list[dict]:
    """The tags of every page of a TIFF, without decoding pixels."""
    try:
        return _tiff_pages(path, _read_bytes(path))[1]
    except (ValueError, IndexError) as err:
        raise UserError(f"{path}: damaged TIFF ({err})") from None


def read_tiff_cube(path: str) -> np.ndarray:
    """A multi-band TIFF as (H, W, C): all samples of the first page, or single-band pages stacked.

    Baseline TIFF/BigTIFF, strips or tiles, chunky or planar, uncompressed, LZW, Deflate or PackBits.
    """
    buf = _read_bytes(path)
    try:
        order, pages = _tiff_pages(path, buf)
    except (ValueError, IndexError) as err:
        raise UserError(f"{path}: damaged TIFF ({err})") from None
    if not pages:
        raise UserError(f"{path}: TIFF without images")
    try:
        first = _tiff_page_array(path, buf, order, pages[0])
        planes = [first]
        if first.shape[0] == 1:  # one band per page: stack the pages of the same size and type
            for tags in pages[1:]:
                if int(_tiff_tag(tags, 277, 1)[0]) != 1:
                    break
                page = _tiff_page_array(path, buf, order, tags)
                if page.shape != first.shape or page.dtype != first.dtype:
                    break
                planes.append(page)
    except (ValueError, zlib.error, IndexError) as err:
        raise UserError(f"{path}: damaged TIFF ({err})") from None
    return np.concatenate(planes, axis=0).transpose(1, 2, 0)
