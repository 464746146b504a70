"""Pixel decoding for the DICOM loader: per-file decode with decoder fallback, in this process or in a process pool.

pydicom's decoders hold the GIL, so parallel decoding uses processes. Uncompressed files are always read in this
process (reading them is cheaper than shipping their pixels between processes).
"""

from __future__ import annotations

import multiprocessing
import os
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.pixels import get_decoder, pixel_array
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLossless,
    JPEGLosslessSV1,
)

from kaggle_utils.dicom_headers import PIXEL_DATA_TAG, ensure_transfer_syntax, us_value

# Preferred decoder plugins per transfer syntax family; "" is pydicom's own choice. Others that are installed
# are tried after these, so a failure falls back to the next one (logged in the volume's notes). Order by
# bench/bench_preprocess.py (512x512 CT, interleaved repeats, ms per frame): JPEG 2000 gdcm 27-29, pillow ~29,
# pylibjpeg-openjpeg 41 (the old first choice: the kit's 1.5-1.65x over the floor); JPEG-LS pyjpegls 7.3, gdcm 9.7,
# pylibjpeg-libjpeg 34 (the old first choice: 3.4x); RLE pylibjpeg-rle 2, pydicom's own 12.
_JPEG2000 = ("gdcm", "pylibjpeg", "pillow")
_JPEG_LS = ("pyjpegls", "gdcm", "pylibjpeg")
_RLE = ("pylibjpeg", "pydicom")
# 8-bit JPEG baseline: pillow (libjpeg-turbo) 4.3, gdcm 7.5, pylibjpeg-libjpeg 9.7; pillow and gdcm give identical
# values (pydicom's default and SimpleITK use gdcm), pylibjpeg differs from both by 1 on ~2% of pixels (lossy
# IDCT rounding).
_JPEG_BASELINE = ("pillow", "gdcm", "pylibjpeg")
# JPEG lossless (process 14 and its SV1 form; pillow cannot decode them): gdcm 1.4-2x faster than pylibjpeg-libjpeg
# on real files (fo-dicom's 512x512 12-bit CT 15.7 vs 24.8 ms, a 1576x1976 CR 99 vs 189 ms, pydicom's JPEG-LL
# 5.2 vs 10.2 ms), with identical values (lossless). Other JPEG processes (12-bit extended): pylibjpeg first.
_JPEG_LOSSLESS = ("gdcm", "pylibjpeg")
_JPEG = ("pylibjpeg", "gdcm", "pillow")
# Compressed series with fewer frames than this are decoded in-process even when workers > 1.
MIN_FILES_FOR_POOL = 8


class DecodeError(Exception):
    """Every available decoder failed on a file; ``str()`` lists each decoder's error."""


class PoolUnavailable(Exception):
    """The process pool could not run (no processes allowed, start failure); decode in-process instead."""


@dataclass(frozen=True)
class DecodeTask:
    """Decode these frames of one file (``frames`` None: a classic single-frame file)."""

    path: str
    frames: tuple[int, ...] | None
    n_frames_in_file: int


def plugin_order(ts: str) -> list[str]:
    """Decoder plugins to try for transfer syntax ``ts``, best first (native syntaxes: just pydicom's)."""
    decoder = get_decoder(UID(ts))
    if decoder.is_native:
        return [""]
    name = UID(ts).name.upper()
    if "2000" in name:
        preferred = _JPEG2000
    elif "JPEG-LS" in name:
        preferred = _JPEG_LS
    elif "RLE" in name:
        preferred = _RLE
    elif UID(ts) == JPEGBaseline8Bit:
        preferred = _JPEG_BASELINE
    elif UID(ts) in (JPEGLossless, JPEGLosslessSV1):
        preferred = _JPEG_LOSSLESS
    else:
        preferred = _JPEG
    available = list(decoder.available_plugins)
    order = [p for p in preferred if p in available]
    return order + [p for p in available if p not in order]


def is_compressed(ts: str) -> bool:
    return UID(ts).is_compressed


def _to_gray(arr: np.ndarray, samples: int) -> np.ndarray:
    """Colour frames to luminance (ITU-R BT.601 weights); grayscale frames unchanged."""
    if samples == 1:
        return arr
    return arr[..., 0] * 0.299 + arr[..., 1] * 0.587 + arr[..., 2] * 0.114


def _decode_with(ds: Dataset, task: DecodeTask, plugin: str) -> np.ndarray:
    kwargs = {"decoding_plugin": plugin} if plugin else {}
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if task.frames is None or task.n_frames_in_file == 1:
        arr = pixel_array(ds, **kwargs)
        return _to_gray(arr, samples)[None]
    frames = list(task.frames)
    if is_compressed(ensure_transfer_syntax(ds)) and len(frames) < task.n_frames_in_file:
        arr = np.stack([pixel_array(ds, index=i, **kwargs) for i in frames])
    else:
        arr = pixel_array(ds, **kwargs)[frames]
    return _to_gray(arr, samples)


def _native_format(ds: Dataset, ts: str) -> tuple[np.dtype, int, int] | None:
    """``(dtype, BitsStored, bytes per pixel)`` of plain little-endian grayscale pixel data, or None for anything the
    direct-read shortcuts do not cover (big endian, colour, odd bit depths, signed data with spare high bits)."""
    if ts not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        return None
    bits = int(us_value(ds, "BitsAllocated", 0) or 0)
    stored = int(us_value(ds, "BitsStored", bits) or bits)
    signed = int(us_value(ds, "PixelRepresentation", 0) or 0) == 1
    if int(us_value(ds, "SamplesPerPixel", 1) or 1) != 1 or bits not in (8, 16, 32) or (signed and stored != bits):
        return None
    return np.dtype(f"<{'i' if signed else 'u'}{bits // 8}"), stored, bits // 8


def _mask_spare_bits(arr: np.ndarray, stored: int, in_place: bool = False) -> np.ndarray:
    """Clear the bits above BitsStored of unsigned data (not pixel data: old files put overlays there); a new array
    unless ``in_place``."""
    if arr.dtype.kind == "u" and stored < arr.dtype.itemsize * 8:
        mask = np.asarray((1 << stored) - 1, dtype=arr.dtype)
        return np.bitwise_and(arr, mask, out=arr) if in_place else arr & mask
    return arr


def _native_little_endian(ds: Dataset, task: DecodeTask, ts: UID) -> np.ndarray | None:
    """Plain little-endian grayscale pixels straight from the bytes (pydicom's generic path costs about as much as
    the read itself); None for anything this shortcut does not cover, which then goes through pydicom."""
    fmt = _native_format(ds, ts)
    if fmt is None:
        return None
    dtype, stored, nbytes = fmt
    rows, cols, n = int(ds.Rows), int(ds.Columns), task.n_frames_in_file
    data = ds.PixelData
    if not isinstance(data, bytes) or len(data) < rows * cols * n * nbytes:
        return None
    arr = np.frombuffer(data, dtype=dtype, count=rows * cols * n).reshape(n, rows, cols)
    arr = _mask_spare_bits(arr, stored)
    return arr if task.frames is None or n == 1 else arr[list(task.frames)]


def _readinto_exactly(path: str, offset: int, buffer: np.ndarray) -> bool:
    """Fill ``buffer`` with the bytes of ``path`` from ``offset``; False when the file ends first."""
    view = memoryview(buffer).cast("B")
    with open(path, "rb", buffering=0) as f:
        f.seek(offset)
        got = 0
        while got < len(view):
            n = f.readinto(view[got:])
            if not n:
                return False
            got += n
    return True


def read_native_into(ds: Dataset, task: DecodeTask, ts: str, dest: np.ndarray, scratch: dict) -> bool:
    """Read a single-frame uncompressed little-endian file's pixels from disk straight into ``dest`` (a
    ``(rows, cols)`` float view of the output volume): one read into a reused integer buffer, one conversion, no
    intermediate copies. Gives the same values as ``decode_dataset``; returns False (``dest`` untouched) when the
    file is not that simple case or its pixel data was not deferred, so the caller decodes it the general way.

    ``ts`` is the file's transfer syntax as the header reader found it; ``scratch`` holds the reused buffer between
    calls (one dict per series)."""
    if task.n_frames_in_file != 1:
        return False
    fmt = _native_format(ds, ts)
    if fmt is None:
        return False
    dtype, stored, _ = fmt
    raw = ds._dict.get(PIXEL_DATA_TAG)
    if not isinstance(raw, RawDataElement) or raw.value is not None or raw.value_tell is None:
        return False
    shape = (int(us_value(ds, "Rows")), int(us_value(ds, "Columns")))
    if shape != dest.shape or raw.length is None or raw.length == 0xFFFFFFFF:
        return False
    buffer = scratch.get("buffer")
    if buffer is None or buffer.dtype != dtype or buffer.shape != shape:
        buffer = scratch["buffer"] = np.empty(shape, dtype=dtype)
    if raw.length < buffer.nbytes or not _readinto_exactly(task.path, raw.value_tell, buffer):
        return False
    dest[...] = _mask_spare_bits(buffer, stored, in_place=True)
    return True


def _rle_direct(ds: Dataset, task: DecodeTask, ts: str) -> np.ndarray | None:
    """A single-frame grayscale RLE file decoded with pylibjpeg-rle's frame decoder straight from its fragment, or
    None when the file is not that case (then pydicom's RLE handlers run). pydicom's ``pixel_array`` around the same
    decoder cost ~0.35 ms of a ~0.9 ms 512x512 16-bit frame (option checks, array assembly): most of the kit's RLE
    gap to the floor. Only when every allocated bit is stored, so there are no unused bits for pydicom to correct;
    values equal ``pixel_array``'s (``tests/test_loader_fast_paths.py``)."""
    if "RLE" not in UID(ts).name.upper() or task.n_frames_in_file != 1:
        return None
    bits = int(us_value(ds, "BitsAllocated", 0) or 0)
    stored = int(us_value(ds, "BitsStored", bits) or bits)
    if int(us_value(ds, "SamplesPerPixel", 1) or 1) != 1 or bits not in (8, 16) or stored != bits:
        return None
    try:
        from rle.utils import decode_frame
    except ImportError:
        return None
    rows, cols = int(us_value(ds, "Rows")), int(us_value(ds, "Columns"))
    signed = int(us_value(ds, "PixelRepresentation", 0) or 0) == 1
    fragment = next(generate_frames(ds.PixelData, number_of_frames=1))
    decoded = decode_frame(fragment, rows * cols, bits, "<")
    dtype = np.dtype(f"<{'i' if signed else 'u'}{bits // 8}")
    return np.frombuffer(decoded, dtype=dtype, count=rows * cols).reshape(1, rows, cols)


def decode_dataset(ds: Dataset, task: DecodeTask, fallbacks: list[str] | None = None) -> np.ndarray:
    """Frames of ``task`` as ``(n, rows, cols)`` stored values, trying each installed decoder in turn; when a
    decoder fails and a later one succeeds, ``fallbacks`` (if given) gets one line naming the file and the failure."""
    ts = ensure_transfer_syntax(ds)
    fast = _native_little_endian(ds, task, ts)
    if fast is not None:
        return fast
    errors = []
    try:
        fast = _rle_direct(ds, task, ts)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # noqa: BLE001 - recorded; pydicom's own RLE handlers are tried next
        errors.append(f"pylibjpeg-rle frame decoder: {type(exc).__name__}: {exc}")
    if fast is not None:
        return fast
    for plugin in plugin_order(ts):
        try:
            arr = _decode_with(ds, task, plugin)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - Rust decoders panic with a BaseException; try the next one
            errors.append(f"{plugin or 'pydicom'}: {type(exc).__name__}: {exc}")
            continue
        if errors and fallbacks is not None:
            fallbacks.append(f"{os.path.basename(task.path)}: decoded with {plugin or 'pydicom'} after "
                             + "; ".join(errors))
        return arr
    raise DecodeError("; ".join(errors))


def decode_path(task: DecodeTask, fallbacks: list[str] | None = None) -> np.ndarray:
    ds = pydicom.dcmread(task.path, force=True)
    return decode_dataset(ds, task, fallbacks)


DecodeResult = tuple["np.ndarray | None", "str | None", list[str]]


def _decode_chunk(tasks: list[DecodeTask]) -> list[DecodeResult]:
    """Worker entry: decode each task, returning (array, None, fallbacks) or (None, reason, fallbacks) so one bad
    file spoils nothing."""
    out = []
    for task in tasks:
        fallbacks: list[str] = []
        try:
            out.append((decode_path(task, fallbacks), None, fallbacks))
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - returned to the parent, which records it per file
            out.append((None, f"{type(exc).__name__}: {exc}", fallbacks))
    return out


def _pool_context():
    """fork where the platform has it: children start at once and need no importable ``__main__`` (a script without
    a main guard would break forkserver/spawn). The children only decode and exit, so the usual fork-with-threads
    hazards do not reach them. Elsewhere spawn."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def _worth_a_process(ts: str) -> bool:
    """Compressed and costly to decode: RLE decodes (~2-4 ms a 512x512 frame) about as fast as its pixels can be
    shipped back from a process (bench/bench_preprocess.py: 2 processes took 1.8x one on RLE)."""
    return is_compressed(ts) and "RLE" not in UID(ts).name.upper()


def use_pool(tasks: list[DecodeTask], transfer_syntaxes: set[str], workers: int) -> bool:
    """Processes only pay off for costly-to-decode pixel data with enough frames, and only outside daemon
    processes."""
    if workers <= 1 or multiprocessing.current_process().daemon:
        return False
    if not any(_worth_a_process(ts) for ts in transfer_syntaxes):
        return False
    return sum(1 if t.frames is None else len(t.frames) for t in tasks) >= MIN_FILES_FOR_POOL


def split_tasks(tasks: list[DecodeTask], parts: int) -> list[tuple[int, DecodeTask]]:
    """``(task index, sub-task)``: multi-frame files are cut into ``parts`` frame ranges so one big file can use
    every worker; classic files stay whole."""
    out = []
    for t, task in enumerate(tasks):
        if task.frames is None or len(task.frames) < 2 * parts:
            out.append((t, task))
            continue
        bounds = np.linspace(0, len(task.frames), parts + 1).astype(int)
        out.extend((t, DecodeTask(task.path, task.frames[a:b], task.n_frames_in_file))
                   for a, b in zip(bounds[:-1], bounds[1:]) if b > a)
    return out


def decode_in_pool(tasks: list[DecodeTask], workers: int, fallbacks: list[str] | None = None,
                   executor: Executor | None = None) -> Iterator[tuple[int, np.ndarray | None, str | None]]:
    """Decode ``tasks`` in ``workers`` processes, chunked by file lists; yields ``(task index, frames, error)`` in
    task order. ``executor``: a caller-owned pool kept alive between series (``decode_pool``), else a pool is
    started and shut down here. Raises ``PoolUnavailable`` when processes cannot be used (the caller decodes what is
    left itself)."""
    workers = max(1, min(workers, os.cpu_count() or 1))
    subtasks = split_tasks(tasks, workers)
    n_chunks = min(len(subtasks), workers * 4)  # a few chunks per worker evens out file-size differences
    bounds = np.linspace(0, len(subtasks), n_chunks + 1).astype(int)
    chunks = [subtasks[a:b] for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    own = executor is None
    if own:
        try:
            executor = ProcessPoolExecutor(max_workers=min(workers, len(chunks)), mp_context=_pool_context())
        except (OSError, ValueError, RuntimeError) as exc:
            raise PoolUnavailable(f"{type(exc).__name__}: {exc}") from exc
    parts: dict[int, list[tuple[np.ndarray | None, str | None]]] = defaultdict(list)
    expected = Counter(t for t, _ in subtasks)
    try:
        try:
            results = executor.map(_decode_chunk, [[sub for _, sub in chunk] for chunk in chunks])
            for chunk, chunk_result in zip(chunks, results):
                for (t, _), (arr, error, chunk_fallbacks) in zip(chunk, chunk_result):
                    parts[t].append((arr, error))
                    if fallbacks is not None:
                        fallbacks.extend(chunk_fallbacks)
                    if len(parts[t]) == expected[t]:
                        yield (t, *_merge(parts.pop(t)))
        except BrokenProcessPool as exc:
            raise DecodeError(f"a decoder process died ({exc}): a decoder crashed on one of the files") from exc
        except (OSError, RuntimeError) as exc:  # e.g. no more processes allowed; worker errors come back as values
            raise PoolUnavailable(f"{type(exc).__name__}: {exc}") from exc
    finally:
        if own:
            executor.shutdown(wait=True, cancel_futures=True)


def _merge(parts: list[tuple[np.ndarray | None, str | None]]) -> tuple[np.ndarray | None, str | None]:
    errors = [e for a, e in parts if a is None]
    if errors:
        return None, errors[0]
    return (parts[0][0] if len(parts) == 1 else np.concatenate([a for a, _ in parts])), None
