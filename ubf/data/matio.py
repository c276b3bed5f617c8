"""The one `.mat` reader and writer of the project.

MATLAB v5 files go through scipy, v7.3 (HDF5) files through h5py. h5py returns arrays with their
axes reversed (HDF5 stores MATLAB's column-major arrays as row-major): `_from_hdf5` is the single
place that turns them back, so every caller sees MATLAB's (H, W, C) order.
"""
import datetime
import os
import struct
import zipfile
import zlib

from scipy.io.matlab import MatReadError

import h5py
import numpy as np
import scipy.io as sio

from ubf.core.errors import UserError
from ubf.core.fs import atomic_output
from ubf.core.logs import get_logger
from ubf.data.limits import MAX_EXPANSION, check_declared_size, human_bytes

# Names the paper's datasets and common releases use for the hyperspectral cube, in priority order.
HSI_KEYS = ("Y", "HSI", "hsi", "cube", "ref", "chikusei", "data", "img", "rad", "reflectance")
RGB_KEYS = ("RGB", "rgb")
ABUNDANCE_KEYS = ("Abu", "SR")
WAVELENGTH_KEYS = ("wavelengths", "wavelength", "bands", "wl", "lambda")

# What scipy and h5py raise on a file that is not a MAT file (a short text file named .mat gives IndexError).
UNREADABLE = (OSError, ValueError, TypeError, IndexError, KeyError, EOFError, AssertionError, struct.error,
              zipfile.BadZipFile, NotImplementedError, MatReadError, zlib.error)

# HDF5 lets a variable live in another file (external link, virtual dataset, external storage): a .mat
# that does is refused unless this environment variable is 1, so a crafted file cannot make a reader
# open whatever it names elsewhere on disk.
ALLOW_EXTERNAL_ENV = "UBF_ALLOW_EXTERNAL_LINKS"


def is_v73(path: str) -> bool:
    return h5py.is_hdf5(path)


def external_links_allowed() -> bool:
    return os.environ.get(ALLOW_EXTERNAL_ENV, "") == "1"


def _refuse_external(path: str, name: str, target: str) -> None:
    if not external_links_allowed():
        raise UserError(f"{path}: variable '{name}' links to another file ({target}); refused (set "
                        f"{ALLOW_EXTERNAL_ENV}=1 to follow links you trust)")


def hdf5_variables(path: str, f) -> dict:
    """{name: dataset} of the top-level MATLAB variables of an open v7.3 file, links checked first.

    External links, virtual datasets drawing on other files and external raw storage are refused
    (see ALLOW_EXTERNAL_ENV) before h5py follows them.
    """
    out = {}
    for name in f.keys():
        if name.startswith("#"):
            continue
        link = f.get(name, getlink=True)
        if isinstance(link, h5py.ExternalLink):
            _refuse_external(path, name, link.filename)
        item = f.get(name)
        if not isinstance(item, h5py.Dataset):
            continue
        if item.is_virtual:
            sources = sorted({s.file_name for s in item.virtual_sources() if s.file_name != "."})
            if sources:
                _refuse_external(path, name, ", ".join(sources))
        if item.external:
            _refuse_external(path, name, ", ".join(str(e[0]) for e in item.external))
        out[name] = item
    return out


def _check_hdf5_size(path: str, name: str, dataset) -> None:
    """Refuse a dataset whose declared size its stored bytes (or memory) cannot hold, before reading it."""
    stored, expansion = None, None
    if not (dataset.is_virtual or dataset.external):
        stored = dataset.id.get_storage_size()
        if dataset.compression is None and not dataset.scaleoffset:
            expansion = 1.0
        elif dataset.compression == "gzip":
            expansion = MAX_EXPANSION["deflate"]
    check_declared_size(f"{path}: variable '{name}'", tuple(reversed(dataset.shape)), dataset.dtype, stored, expansion)


def _from_hdf5(dataset, path: str = "", name: str = "") -> np.ndarray:
    """Read an h5py dataset and undo the axis reversal of MATLAB v7.3."""
    _check_hdf5_size(path or dataset.file.filename, name or dataset.name, dataset)
    if dataset.attrs.get("MATLAB_empty"):  # MATLAB stores an empty array as its dimensions
        return np.zeros(tuple(int(d) for d in np.asarray(dataset[()]).ravel()), dtype=np.float64)
    array = np.asarray(dataset[()])
    if array.dtype.names and {"real", "imag"} <= set(array.dtype.names):
        array = array["real"] + 1j * array["imag"]
    return array.transpose()


_V5_TYPES = {"double": "f8", "single": "f4", "int8": "i1", "uint8": "u1", "int16": "i2", "uint16": "u2",
             "int32": "i4", "uint32": "u4", "int64": "i8", "uint64": "u8", "logical": "u1", "char": "u2"}


def _check_v5_sizes(path: str, entries) -> None:
    """Declared sizes of a v5 file (from `whosmat`) against its bytes (x1100 when compressed) and memory."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        f.seek(128)
        head = f.read(4)
    compressed = len(head) == 4 and struct.unpack("<I", head)[0] in (15, 15 << 24)
    for name, shape, kind in entries:
        if kind not in _V5_TYPES:
            continue
        needed = int(np.prod(shape, dtype=object)) * np.dtype(_V5_TYPES[kind]).itemsize
        if needed > size * (MAX_EXPANSION["deflate"] if compressed else 1.0) + 4096:
            # a truncated file or a crafted header: scipy would fail on it too, later
            raise UserError(f"{path}: not a readable .mat file (variable '{name}' declares "
                            f"{' x '.join(map(str, shape))} {kind} values, {human_bytes(needed)}, but the file "
                            f"holds {human_bytes(size)})")
        check_declared_size(f"{path}: variable '{name}'", shape, _V5_TYPES[kind])  # memory


def _check_exists(path: str) -> None:
    if not os.path.isfile(path):
        raise UserError(f"{path}: file not found")


def mat_keys(path: str) -> list[str]:
    """Names of the numeric variables in a .mat file (either version)."""
    _check_exists(path)
    try:
        if is_v73(path):
            with h5py.File(path, "r") as f:
                return list(hdf5_variables(path, f))
        return [name for name, _, _ in sio.whosmat(path) if not name.startswith("__")]
    except UNREADABLE as err:
        raise UserError(f"{path}: not a readable .mat file ({str(err).splitlines()[0][:100]})") from None


def mat_shape(path: str, key: str) -> tuple:
    """Shape of one variable in MATLAB order, without reading its values (v5 and v7.3)."""
    _check_exists(path)
    try:
        if is_v73(path):
            with h5py.File(path, "r") as f:
                variables = hdf5_variables(path, f)
                if key in variables:
                    return tuple(reversed(variables[key].shape))
        else:
            for name, shape, _ in sio.whosmat(path):
                if name == key:
                    return tuple(shape)
    except UNREADABLE as err:
        raise UserError(f"{path}: not a readable .mat file ({str(err).splitlines()[0][:100]})") from None
    raise UserError(f"{path}: no key '{key}' (found: {', '.join(mat_keys(path)) or 'nothing'})")


def read_mat(path: str, keys: list[str] | None = None) -> dict[str, np.ndarray]:
    """All (or the named) numeric variables of a .mat file, in MATLAB axis order."""
    _check_exists(path)
    try:
        if is_v73(path):
            out = {}
            with h5py.File(path, "r") as f:
                variables = hdf5_variables(path, f)
                for name in (keys if keys is not None else variables):
                    if name in variables:
                        out[name] = _from_hdf5(variables[name], path, name)
            return out
        entries = sio.whosmat(path)
        _check_v5_sizes(path, [e for e in entries if keys is None or e[0] in keys])
        raw = sio.loadmat(path, variable_names=keys)
    except UNREADABLE as err:
        raise UserError(f"{path}: not a readable .mat file ({str(err).splitlines()[0][:100]})") from None
    return {k: v for k, v in raw.items() if not k.startswith("__") and isinstance(v, np.ndarray)}


KEY_HINT = "name the variable with --key"


def find_key(path: str, available: list[str], candidates, key: str | None = None, hint: str = KEY_HINT) -> str:
    """Pick the variable to read: `key` if given, else the first candidate present; `hint` ends the error."""
    if key is not None:
        if key not in available:
            raise UserError(f"{path}: no key '{key}' (found: {', '.join(available) or 'nothing'})")
        return key
    for name in candidates:
        if name in available:
            return name
    raise UserError(f"{path}: no key among {', '.join(candidates)} (found: {', '.join(available) or 'nothing'}); "
                    f"{hint}")


def read_array(path: str, candidates=HSI_KEYS, key: str | None = None, hint: str = KEY_HINT) -> tuple[str, np.ndarray]:
    """(key, array) of the first matching variable; the error lists the keys the file has."""
    name = find_key(path, mat_keys(path), candidates, key, hint)
    return name, read_mat(path, [name])[name]


def _benchmark_to_hwc(path: str, y: np.ndarray, contents: dict) -> np.ndarray:
    """Unmixing-benchmark layout: `Y` is bands x pixels, pixels in column-major order."""
    lines = int(np.asarray(contents["lines"]).ravel()[0])
    cols = int(np.asarray(contents["cols"]).ravel()[0])
    if y.shape[1] != lines * cols:
        if y.shape[0] == lines * cols:
            y = y.T
        else:
            raise UserError(f"{path}: Y is {y.shape[0]} x {y.shape[1]} but lines x cols = {lines} x {cols}")
    bands = y.shape[0]
    return y.T.reshape(cols, lines, bands).transpose(1, 0, 2)


def read_wavelengths(contents: dict, n_bands: int) -> np.ndarray | None:
    """Wavelengths (nm) if the file stores a vector of one per band."""
    for name in WAVELENGTH_KEYS:
        if name in contents:
            values = np.asarray(contents[name], dtype=np.float64).ravel()
            if values.size == n_bands and np.all(np.isfinite(values)):
                if values.max() < 30:  # stored in micrometres
                    values = values * 1000.0
                return values
    return None


def stored_wavelength_count(contents: dict) -> int | None:
    """How many wavelengths the file stores (a vector), i.e. its band count as the file itself says."""
    for name in WAVELENGTH_KEYS:
        if name in contents:
            values = np.asarray(contents[name])
            if values.ndim <= 2 and min(values.shape or (1,)) == 1 and values.size > 3:
                return int(values.size)
    return None


def orient_cube(path: str, name: str, cube: np.ndarray, expected_bands: int | None) -> np.ndarray:
    """(H, W, C) order for a 3-D array that may have its bands first, as MATLAB's H x W x C demands.

    With a band count to expect (checkpoint, config, the file's wavelengths), an array with exactly one
    other axis of that length is transposed with a logged warning. Without one, the shape C x H x W of
    square crops (H != W == C) is refused, naming the axis order, rather than trained as a
    C-row image; the band count given through wavelengths settles it.
    """
    height, width, bands = cube.shape
    if expected_bands is not None:
        if bands == expected_bands:
            return cube
        matches = [axis for axis in (0, 1) if cube.shape[axis] == expected_bands]
        if len(matches) == 1:
            order = (1, 2, 0) if matches[0] == 0 else (0, 2, 1)
            layout = "C x H x W" if matches[0] == 0 else "H x C x W"
            cube = np.ascontiguousarray(cube.transpose(order))
            get_logger().warning("%s: variable '%s' is %d x %d x %d, read as %s (%d bands expected); transposed to "
                                 "H x W x C = %d x %d x %d", path, name, height, width, bands, layout, expected_bands,
                                 *cube.shape)
        return cube
    if width == bands and height != width:
        raise UserError(f"{path}: variable '{name}' is {height} x {width} x {bands}, which looks like bands first "
                        f"(C x H x W: {height} bands of {width} x {bands} pixels) rather than H x W x C; store it "
                        "as H x W x C, or state the band count (a 'wavelengths' variable in the file, or "
                        "data.wavelengths)")
    return cube


def read_hsi(path: str, key: str | None = None,
             expected_bands: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """A hyperspectral cube as float32 (H, W, C) and its wavelengths (C,) or None.

    Recognises the unmixing-benchmark layout (`Y` bands x pixels with `lines`/`cols`) and a cube
    stored bands first (`orient_cube`; `expected_bands`: the band count the caller needs, if known).
    NaN or Inf values are an error naming the file.
    """
    contents = read_mat(path)
    name = find_key(path, list(contents), HSI_KEYS, key)
    cube = np.asarray(contents[name])
    if not np.issubdtype(cube.dtype, np.number) or np.iscomplexobj(cube):
        raise UserError(f"{path}: variable '{name}' is not a real numeric array")
    if cube.ndim == 2 and "lines" in contents and "cols" in contents:
        cube = _benchmark_to_hwc(path, cube, contents)
    if cube.ndim != 3:
        raise UserError(f"{path}: variable '{name}' has shape {cube.shape}, expected H x W x C")
    cube = orient_cube(path, name, cube, expected_bands or stored_wavelength_count(contents))
    cube = cube.astype(np.float32, copy=False)
    if not np.all(np.isfinite(cube)):
        bad = int(np.size(cube) - np.count_nonzero(np.isfinite(cube)))
        raise UserError(f"{path}: variable '{name}' contains {bad} NaN/Inf values")
    return cube, read_wavelengths(contents, cube.shape[2])


class LazyMatArray:
    """One variable of a .mat file, sliced in MATLAB (H, W, ...) order without loading it all.

    v7.3 files are read window by window through h5py; v5 files cannot be streamed and are loaded once.
    """

    def __init__(self, path: str, key: str | None = None, candidates=HSI_KEYS, hint: str = KEY_HINT):
        self.path = path
        self.key = find_key(path, mat_keys(path), candidates, key, hint)
        self._v73 = is_v73(path)
        if self._v73:
            self._file = h5py.File(path, "r")
            self._dataset = hdf5_variables(path, self._file)[self.key]
            self.shape = tuple(reversed(self._dataset.shape))
            self.dtype = self._dataset.dtype
            # streamed window by window: only the file's own bytes bound it (no whole-array allocation)
            if not (self._dataset.is_virtual or self._dataset.external) and self._dataset.compression is None:
                check_declared_size(f"{path}: variable '{self.key}'", self.shape, self.dtype,
                                    self._dataset.id.get_storage_size(), 1.0, memory=False)
        else:
            self._file = None
            self._array = read_mat(path, [self.key])[self.key]
            self.shape = self._array.shape
            self.dtype = self._array.dtype

    def window(self, rows: slice, cols: slice) -> np.ndarray:
        """The (h, w, ...) block at `rows`, `cols` in MATLAB order."""
        if self._v73:
            # HDF5 axes are reversed: (..., W, H)
            block = self._dataset[..., cols, rows]
            return np.asarray(block).transpose()
        return self._array[rows, cols]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def write_mat(path: str, variables: dict, overwrite: bool = True) -> None:
    """Write a MATLAB v5 file atomically; refuse to replace an existing file unless `overwrite`."""
    if not overwrite and os.path.exists(path):
        raise UserError(f"{path}: exists already (use --overwrite to replace it)")
    with atomic_output(path) as tmp:
        sio.savemat(tmp, variables, appendmat=False, do_compression=False)


MAT73_HEADER = "MATLAB 7.3 MAT-file, Platform: {platform}, Created on: {date} HDF5 schema 1.00 ."
_MATLAB_CLASSES = {"f8": "double", "f4": "single", "i1": "int8", "u1": "uint8", "i2": "int16", "u2": "uint16",
                   "i4": "int32", "u4": "uint32", "i8": "int64", "u8": "uint64"}


def _mat73_value(f, refs, name: str, value, path: str) -> None:
    """One variable as MATLAB v7.3 stores it: the array transposed (HDF5 is row-major), MATLAB_class set."""
    if isinstance(value, str):
        value = np.array(value)
    array = np.asarray(value)
    if array.dtype.kind in "US":
        text = str(array.item()) if array.ndim == 0 else ""
        if array.ndim != 0:
            raise UserError(f"{path}: variable '{name}': only single strings or lists of strings can be written")
        codes = np.array([ord(c) for c in text], dtype=np.uint16)
        dataset = (f.create_dataset(name, data=np.array([0, 0], np.uint64)) if codes.size == 0
                   else f.create_dataset(name, data=codes.reshape(1, -1).T))
        dataset.attrs["MATLAB_class"] = np.bytes_("char")
        dataset.attrs["MATLAB_int_decode"] = np.int32(2)
        if codes.size == 0:
            dataset.attrs["MATLAB_empty"] = np.uint8(1)
        return
    if array.dtype == object:  # a list of strings: a cell array (1 x n) of char arrays in #refs#
        references = []
        for i, item in enumerate(array.ravel()):
            _mat73_value(refs, refs, f"{name}_{i}", str(item), path)
            references.append(refs[f"{name}_{i}"].ref)
        dataset = f.create_dataset(name, data=np.array(references, dtype=h5py.ref_dtype).reshape(-1, 1))
        dataset.attrs["MATLAB_class"] = np.bytes_("cell")
        return
    if array.dtype == bool:
        array, matlab_class = array.astype(np.uint8), "logical"
    else:
        matlab_class = _MATLAB_CLASSES.get(array.dtype.str[1:])
    if matlab_class is None or np.iscomplexobj(array):
        raise UserError(f"{path}: variable '{name}' of type {array.dtype} cannot be written to a v7.3 .mat")
    if array.ndim < 2:  # MATLAB arrays are at least 2-D; a vector is a row (1 x n), as scipy's savemat writes
        array = array.reshape(1, -1)
    if array.size == 0:
        dataset = f.create_dataset(name, data=np.array(array.shape, dtype=np.uint64))
        dataset.attrs["MATLAB_empty"] = np.uint8(1)
    else:
        dataset = f.create_dataset(name, data=np.ascontiguousarray(array.T))
    dataset.attrs["MATLAB_class"] = np.bytes_(matlab_class)
    if matlab_class == "logical":
        dataset.attrs["MATLAB_int_decode"] = np.int32(1)


def write_mat73(path: str, variables: dict, overwrite: bool = True) -> None:
    """Write a MATLAB v7.3 (HDF5) file atomically, readable by h5py, MATLAB and this project's reader.

    Arrays keep MATLAB's H x W x C as MATLAB sees it (h5py shows the reversed C x W x H, which
    `_from_hdf5` undoes); strings become char arrays, lists of strings cell arrays. The 512-byte
    user block carries MATLAB's text header.
    """
    if not overwrite and os.path.exists(path):
        raise UserError(f"{path}: exists already (use --overwrite to replace it)")
    with atomic_output(path) as tmp:
        with h5py.File(tmp, "w", userblock_size=512, libver="earliest") as f:
            refs = f.create_group("#refs#")
            for name, value in variables.items():
                _mat73_value(f, refs, name, value, path)
            if not len(refs):
                del f["#refs#"]
        date = datetime.datetime.now().strftime("%a %b %d %H:%M:%S %Y")
        text = MAT73_HEADER.format(platform="GLNXA64", date=date).encode("ascii")
        header = text.ljust(116, b" ")[:116] + b"\0" * 8 + b"\x00\x02" + b"IM"
        with open(tmp, "r+b") as f:
            f.write(header.ljust(512, b"\0"))


def endmember_matrix(array) -> np.ndarray:
    """A stored `End` as a (C, K) float32 matrix: the reference writes the decoder weight (C, K, 1, 1)."""
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 4 and array.shape[2:] == (1, 1):
        array = array[:, :, 0, 0]
    return array
