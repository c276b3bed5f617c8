"""The project's own TIFF code: tags, a decoder for multi-band TIFFs (which Pillow cannot open), a writer.

Reading: baseline TIFF and BigTIFF, strips or tiles, chunky or planar samples, uncompressed, LZW,
Deflate or PackBits. `read_tiff_pages(path)` gives the tags of every page (memory-mapped, no pixels
decoded); `tiff_layout(path)` what the first page declares, validated (strip/tile offsets and counts
present, consistent and inside the file; the declared size bounded by the file's bytes and by memory);
`read_tiff_cube(path) -> (H, W, C)` decodes. `ubf/data/cubes.py` prefers `tifffile` for the pixels and
falls back to this decoder; the tags (GDAL metadata, no-data, GeoTIFF keys) are always read here.

Writing: `write_tiff_file` writes one uncompressed, pixel-interleaved page (BigTIFF above 4 GiB) with
any extra tags (GDAL_METADATA 42112, GDAL_NODATA 42113, the GeoTIFF tags), so `--format tiff` works
with or without tifffile and GDAL, QGIS, rasterio and tifffile all open the result.
"""
import mmap
import os
import zlib
from dataclasses import dataclass

import numpy as np

from ubf.core.errors import UserError
from ubf.data.limits import MAX_EXPANSION, check_declared_size

TIFF_EXTENSIONS = (".tif", ".tiff")

_TIFF_VALUE_TYPES = {1: "u1", 2: "u1", 3: "u2", 4: "u4", 5: "u4", 6: "i1", 7: "u1", 8: "i2", 9: "i4",
                     10: "i4", 11: "f4", 12: "f8", 13: "u4", 16: "u8", 17: "i8", 18: "u8"}
_TIFF_SAMPLE_TYPES = {(1, 8): "u1", (1, 16): "u2", (1, 32): "u4", (2, 8): "i1", (2, 16): "i2",
                      (2, 32): "i4", (3, 32): "f4", (3, 64): "f8"}
_COMPRESSION_NAMES = {1: "none", 5: "lzw", 8: "deflate", 32946: "deflate", 32773: "packbits"}
MAX_PAGES = 100000


def is_tiff(path: str) -> bool:
    """True when the file starts like a TIFF or BigTIFF (its own header decides, not its name)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return head in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")


def _map_file(path: str):
    """The file's bytes, memory-mapped read-only (an empty file gives b'')."""
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                return b""
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror or err})") from None


def _tiff_pages(path: str, buf) -> tuple[str, list[dict]]:
    """Byte order and the tag dictionaries (tag -> 1-D array, copied) of every page (IFD) of a TIFF."""
    order = {b"II": "<", b"MM": ">"}.get(bytes(buf[:2]))
    if order is None or len(buf) < 16:
        raise UserError(f"{path}: not a TIFF file (starts with {bytes(buf[:4])!r})")

    def number(fmt: str, at: int) -> int:
        return int(np.frombuffer(buf, order + fmt, 1, at)[0])

    magic = number("u2", 2)
    if magic not in (42, 43):
        raise UserError(f"{path}: not a TIFF file (version {magic}, expected 42 or 43)")
    big = magic == 43
    word, count_fmt, entry_size = (8, "u8", 20) if big else (4, "u4", 12)
    offset, pages, seen = number("u8" if big else "u4", 8 if big else 4), [], set()
    while offset and offset not in seen and len(pages) < MAX_PAGES:
        seen.add(offset)
        n_entries = number("u8" if big else "u2", offset)
        start = offset + (8 if big else 2)
        if start + n_entries * entry_size > len(buf):
            raise ValueError(f"directory at byte {offset} runs past the end of the file")
        tags = {}
        for i in range(n_entries):
            at = start + i * entry_size
            tag, kind, count = number("u2", at), number("u2", at + 2), number(count_fmt, at + 4)
            if kind not in _TIFF_VALUE_TYPES:
                continue
            dtype = np.dtype(order + _TIFF_VALUE_TYPES[kind])
            n_values = count * (2 if kind in (5, 10) else 1)
            if n_values * dtype.itemsize > len(buf):
                raise ValueError(f"tag {tag} declares {count} values, more than the file holds")
            data_at = at + 4 + word
            if n_values * dtype.itemsize > word:
                data_at = number("u8" if big else "u4", data_at)
            tags[tag] = np.frombuffer(buf, dtype, n_values, data_at).copy()
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


_DECODERS = {1: bytes, 5: _lzw_decode, 8: zlib.decompress, 32946: zlib.decompress, 32773: _packbits_decode}


def _tiff_tag(tags: dict, tag: int, default=None):
    if tag in tags:
        return tags[tag]
    if default is None:
        raise KeyError(tag)
    return np.atleast_1d(default)


@dataclass
class PageLayout:
    """What one TIFF page declares, checked against the file."""
    width: int
    height: int
    samples: int
    dtype: np.dtype
    compression: int
    predictor: int
    planar: int
    block_w: int
    block_h: int
    tiled: bool
    offsets: np.ndarray
    counts: np.ndarray


def page_layout(path: str, tags: dict, order: str, file_size: int) -> PageLayout:
    """Validate one page's tags (image size, sample type, codec, strip/tile table) before any decoding."""
    try:
        width, height = int(_tiff_tag(tags, 256)[0]), int(_tiff_tag(tags, 257)[0])
    except (KeyError, IndexError):
        raise UserError(f"{path}: TIFF page without image size (tags 256/257)") from None
    samples = int(_tiff_tag(tags, 277, 1)[0])
    if width < 1 or height < 1 or samples < 1:
        raise UserError(f"{path}: TIFF page declares {height} x {width} pixels of {samples} samples")
    bits, formats = set(_tiff_tag(tags, 258, 1).tolist()), set(_tiff_tag(tags, 339, 1).tolist())
    if len(bits) != 1 or len(formats) != 1 or (min(formats), min(bits)) not in _TIFF_SAMPLE_TYPES:
        raise UserError(f"{path}: TIFF samples of {sorted(bits)} bits, format {sorted(formats)} are not supported "
                        "(expected 8/16/32-bit integers or 32/64-bit floats)")
    dtype = np.dtype(order + _TIFF_SAMPLE_TYPES[(min(formats), min(bits))])
    compression, predictor = int(_tiff_tag(tags, 259, 1)[0]), int(_tiff_tag(tags, 317, 1)[0])
    planar = int(_tiff_tag(tags, 284, 1)[0])
    tiled = 322 in tags or 324 in tags
    if tiled:
        names = {322: "TileWidth", 323: "TileLength", 324: "TileOffsets", 325: "TileByteCounts"}
        missing = [f"{names[t]} ({t})" for t in names if t not in tags]
        if missing:
            raise UserError(f"{path}: tiled TIFF without {', '.join(missing)}")
        block_w, block_h = int(tags[322][0]), int(tags[323][0])
        offsets, counts = tags[324], tags[325]
    else:
        missing = [f"{name} (tag {t})" for t, name in ((273, "StripOffsets"), (279, "StripByteCounts"))
                   if t not in tags]
        if missing:
            raise UserError(f"{path}: TIFF page without {' and '.join(missing)}; the pixel data cannot be found")
        block_w, block_h = width, min(height, int(_tiff_tag(tags, 278, height)[0]) or height)
        offsets, counts = tags[273], tags[279]
    if block_w < 1 or block_h < 1:
        raise UserError(f"{path}: TIFF blocks of {block_h} x {block_w} pixels")
    across, down = -(-width // block_w), -(-height // block_h)
    needed = (samples if planar == 2 else 1) * across * down
    kind = "tiles" if tiled else "strips"
    if len(offsets) != len(counts):
        raise UserError(f"{path}: TIFF lists {len(offsets)} {kind} offsets but {len(counts)} byte counts")
    if len(offsets) < needed:
        raise UserError(f"{path}: TIFF has {len(offsets)} {kind}, fewer than its {height} x {width} size needs ({needed})")
    ends = offsets[:needed].astype(np.uint64) + counts[:needed].astype(np.uint64)
    if needed and int(ends.max()) > file_size:
        first = int(np.argmax(ends > file_size))
        raise UserError(f"{path}: TIFF {kind[:-1]} {first} ends at byte {int(ends[first])}, past the end of the "
                        f"file ({file_size} bytes); the file is truncated or its tags are wrong")
    check_declared_size(path, (height, width, samples), dtype, int(counts[:needed].astype(np.uint64).sum()),
                        MAX_EXPANSION.get(_COMPRESSION_NAMES.get(compression, ""), None))
    return PageLayout(width, height, samples, dtype, compression, predictor, planar, block_w, block_h, tiled,
                      offsets, counts)


def _tiff_page_array(path: str, buf, layout: PageLayout) -> np.ndarray:
    """Decode one TIFF page to (samples, H, W) in its stored dtype."""
    if layout.compression not in _DECODERS:
        raise UserError(f"{path}: TIFF compression {layout.compression} is not supported by the built-in decoder "
                        "(expected none, LZW, Deflate or PackBits; install tifffile and imagecodecs for others)")
    if layout.predictor not in (1, 2):
        raise UserError(f"{path}: TIFF predictor {layout.predictor} is not supported by the built-in decoder "
                        "(expected none or horizontal; install tifffile and imagecodecs)")
    samples, height, width, dtype = layout.samples, layout.height, layout.width, layout.dtype
    block_w, block_h = layout.block_w, layout.block_h
    per_chunk = 1 if layout.planar == 2 else samples
    across, down = -(-width // block_w), -(-height // block_h)
    decode = _DECODERS[layout.compression]
    out = np.empty((samples, height, width), dtype.newbyteorder("="))
    index = 0
    for plane in range(samples if layout.planar == 2 else 1):
        for i in range(down):
            for j in range(across):
                start = int(layout.offsets[index])
                raw = decode(buf[start:start + int(layout.counts[index])])
                index += 1
                rows = block_h if layout.tiled else min(block_h, height - i * block_h)
                block = np.frombuffer(raw, dtype, rows * block_w * per_chunk).reshape(rows, block_w, per_chunk)
                block = block.astype(dtype.newbyteorder("="))
                if layout.predictor == 2:
                    block = np.cumsum(block, axis=1, dtype=block.dtype)
                r0, c0 = i * block_h, j * block_w
                r1, c1 = min(height, r0 + rows), min(width, c0 + block_w)
                target = slice(plane, plane + 1) if layout.planar == 2 else slice(None)
                out[target, r0:r1, c0:c1] = block[:r1 - r0, :c1 - c0].transpose(2, 0, 1)
    return out


def read_tiff_pages(path: str) -> list[dict]:
    """The tags of every page of a TIFF, without decoding pixels."""
    return read_tiff_tags(path)[1]


def read_tiff_tags(path: str) -> tuple[str, list[dict]]:
    """(byte order, tags of every page), without decoding pixels."""
    buf = _map_file(path)
    try:
        return _tiff_pages(path, buf)
    except (ValueError, IndexError) as err:
        raise UserError(f"{path}: damaged TIFF ({err})") from None
    finally:
        if isinstance(buf, mmap.mmap):
            buf.close()


def tiff_layout(path: str) -> PageLayout:
    """The first page's validated layout (size, samples, type, strips/tiles), nothing decoded."""
    order, pages = read_tiff_tags(path)
    if not pages:
        raise UserError(f"{path}: TIFF without images")
    return page_layout(path, pages[0], order, os.path.getsize(path))


def read_tiff_cube(path: str) -> np.ndarray:
    """A multi-band TIFF as (H, W, C): all samples of the first page, or single-band pages stacked.

    Baseline TIFF/BigTIFF, strips or tiles, chunky or planar, uncompressed, LZW, Deflate or PackBits.
    """
    buf = _map_file(path)
    try:
        try:
            order, pages = _tiff_pages(path, buf)
        except (ValueError, IndexError) as err:
            raise UserError(f"{path}: damaged TIFF ({err})") from None
        if not pages:
            raise UserError(f"{path}: TIFF without images")
        size = len(buf)
        first_layout = page_layout(path, pages[0], order, size)
        try:
            first = _tiff_page_array(path, buf, first_layout)
            planes = [first]
            if first.shape[0] == 1:  # one band per page: stack the pages of the same size and type
                for tags in pages[1:]:
                    if int(_tiff_tag(tags, 277, 1)[0]) != 1 or 254 in tags and int(tags[254][0]) & 1:
                        break
                    layout = page_layout(path, tags, order, size)
                    if (layout.height, layout.width) != first.shape[1:] or layout.dtype != first_layout.dtype:
                        break
                    check_declared_size(path, (first.shape[1], first.shape[2], len(planes) + 1), first.dtype)
                    planes.append(_tiff_page_array(path, buf, layout))
        except (ValueError, zlib.error, IndexError) as err:
            raise UserError(f"{path}: damaged TIFF ({err})") from None
        return np.concatenate(planes, axis=0).transpose(1, 2, 0)
    finally:
        if isinstance(buf, mmap.mmap):
            buf.close()


def tag_text(tags: dict, code: int) -> str | None:
    """An ASCII tag as text (NUL-terminated, several strings joined by '|'), None when absent."""
    if code not in tags:
        return None
    return bytes(tags[code]).rstrip(b"\0").decode("utf-8", "replace")


# ---------------------------------------------------------------- writing

_WRITE_TYPES = {1: "<u1", 2: "<u1", 3: "<u2", 4: "<u4", 11: "<f4", 12: "<f8", 16: "<u8"}
_SAMPLE_FORMAT = {"u": 1, "i": 2, "f": 3}


def ascii_tag(code: int, text: str) -> tuple[int, int, bytes]:
    """An ASCII tag entry for `write_tiff_file`'s `extra_tags`."""
    return code, 2, text.encode("utf-8") + b"\0"


def write_tiff_file(path: str, cube: np.ndarray, extra_tags=()) -> None:
    """Write (H, W, C) as one uncompressed, pixel-interleaved page (minisblack; BigTIFF above 4 GiB).

    `extra_tags`: (code, type, values) with a TIFF type (2 ASCII as bytes, 3 SHORT, 4 LONG, 12 DOUBLE ...).
    """
    cube = np.asarray(cube)
    if cube.ndim == 2:
        cube = cube[..., None]
    cube = np.ascontiguousarray(cube, dtype=cube.dtype.newbyteorder("<"))
    height, width, samples = cube.shape
    row_bytes = width * samples * cube.dtype.itemsize
    rows_per_strip = max(1, min(height, (256 * 1024) // max(row_bytes, 1)))
    n_strips = -(-height // rows_per_strip)
    big = cube.nbytes + (1 << 20) >= (1 << 32)
    word = 8 if big else 4
    header = 16 if big else 8
    offsets = [header + i * rows_per_strip * row_bytes for i in range(n_strips)]
    counts = [min(rows_per_strip, height - i * rows_per_strip) * row_bytes for i in range(n_strips)]
    offset_type = 16 if big else 4
    entries = [(256, 4, [width]), (257, 4, [height]), (258, 3, [cube.dtype.itemsize * 8] * samples), (259, 3, [1]),
               (262, 3, [1]), (273, offset_type, offsets), (277, 3, [samples]), (278, 4, [rows_per_strip]),
               (279, offset_type, counts), (284, 3, [1]), (339, 3, [_SAMPLE_FORMAT[cube.dtype.kind]] * samples)]
    if samples > 1:
        entries.append((338, 3, [0] * (samples - 1)))  # extra samples, unspecified: a multi-band image
    entries += list(extra_tags)
    entries.sort(key=lambda e: e[0])
    blobs, blob_at = [], header + cube.nbytes
    blob_at += blob_at % 2
    fields = []
    for code, kind, values in entries:
        data = values if isinstance(values, bytes) else np.asarray(values, dtype=_WRITE_TYPES[kind]).tobytes()
        count = len(data) // np.dtype(_WRITE_TYPES[kind]).itemsize
        if len(data) <= word:
            fields.append((code, kind, count, data.ljust(word, b"\0")))
        else:
            fields.append((code, kind, count, np.array([blob_at], "<u8" if big else "<u4").tobytes()))
            blobs.append(data + b"\0" * (len(data) % 2))
            blob_at += len(blobs[-1])
    ifd_at = blob_at
    with open(path, "wb") as f:
        if big:
            f.write(b"II" + np.array([43, 8, 0], "<u2").tobytes() + np.array([ifd_at], "<u8").tobytes())
        else:
            f.write(b"II" + np.array([42], "<u2").tobytes() + np.array([ifd_at], "<u4").tobytes())
        f.write(memoryview(cube.reshape(-1)).cast("B"))
        if (header + cube.nbytes) % 2:
            f.write(b"\0")
        for blob in blobs:
            f.write(blob)
        f.write(np.array([len(fields)], "<u8" if big else "<u2").tobytes())
        for code, kind, count, data in fields:
            f.write(np.array([code, kind], "<u2").tobytes() + np.array([count], "<u8" if big else "<u4").tobytes()
                    + data)
        f.write(b"\0" * word)
