"""Build and load the fused C kernels (`_scan_kernel.c`) through ctypes.

The kernel is plain C (no Python or torch headers): `_scan_kernel.c` and the
headers it includes, built once with the system compiler
(`benchmarks/bench_scan.py` prints the one-off build time). The shared
library is cached under `$MAMBAFLOW_CACHE` (default `~/.cache/mambaflow`)
keyed by a hash of every kernel file, the compiler, its flags and the CPU,
and reused by later processes.
When no compiler is found or the build fails, `load()` returns None with the
reason in `load_error()`, and `mamba.scan` falls back to its pure-PyTorch path.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import NoReturn

import torch

_DIR = Path(__file__).parent
_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_error: str | None = None
_tried = False


def _torch_uses_gomp() -> bool:
    """True when torch parallelises with GNU OpenMP and its libgomp is loaded:
    a kernel built with -fopenmp then binds to that same runtime (same
    soname) and shares torch's worker threads instead of competing with them."""
    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return False
    try:
        with open("/proc/self/maps", encoding="utf-8") as fh:
            return any("libgomp" in line for line in fh)
    except OSError:
        return False


def _flag_sets() -> list[list[str]]:
    # -falign-functions=64: otherwise where a function's hot loops fall
    # against 32/64-byte boundaries depends on the size of every function
    # before it, so an edit to one kernel moved another's speed: the fused
    # backward at (8, 512, 128, 16) measured 11% apart from placement alone.
    native = ["-O3", "-march=native", "-fno-math-errno", "-falign-functions=64"]
    sets = [native + ["-fopenmp"]] if _torch_uses_gomp() else []
    sets.append(native + ["-fopenmp-simd", "-pthread"])
    sets.append(["-O3", "-fno-math-errno", "-pthread"])  # compilers without -march=native
    return sets


def _cache_dir() -> Path:
    root = os.environ.get("MAMBAFLOW_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "mambaflow"
    )
    return Path(root)


def _cpu_signature() -> str:
    """-march=native code must not be reused on another CPU: hash its flags."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = next((ln for ln in fh if ln.startswith(("flags", "Features"))), "")
    except OSError:
        flags = ""
    return platform.machine() + platform.system() + flags


def _sources() -> list[Path]:
    """The kernel's files: the .c it builds and the .h files it includes, i.e.
    every .c and .h here (what package-data ships). All of them go into the
    cache key, so editing a header rebuilds as editing the .c does."""
    return sorted(p for p in _DIR.iterdir() if p.suffix in (".c", ".h"))


def _cache_key(cc: str, flags: list[str], cpu: str, sources: list[Path]) -> str:
    h = hashlib.sha256(repr((cc, flags, cpu)).encode())
    for path in sources:
        data = path.read_bytes()
        h.update(f"\0{path.name}\0{len(data)}\0".encode() + data)  # unambiguous: name, length, bytes
    return h.hexdigest()[:16]


def _build(cc: str, flags: list[str], out: Path) -> str | None:
    """Compile to a temporary file and rename it into place (atomic for
    concurrent processes). Returns None on success, else the compiler's error."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    units = [str(p) for p in _sources() if p.suffix == ".c"]  # headers come in through #include
    cmd = [cc, *flags, "-fPIC", "-shared", "-o", tmp, *units, "-lm"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        os.unlink(tmp)
        return f"{' '.join(cmd)}: {proc.stderr.strip()[-500:]}"
    os.replace(tmp, out)
    return None


class Pointer(ctypes.c_void_p):
    """A data-pointer argument that takes only what `ptrs` makes (a c_void_p)
    or None (NULL). Plain c_void_p would also take an int, bytes or a str as
    an address, so an argument list shifted by one would reach the C code as
    a wild pointer; this raises ctypes.ArgumentError before the call."""

    @classmethod
    def from_param(cls, obj):
        if obj is None or isinstance(obj, ctypes.c_void_p):
            return obj
        raise TypeError(f"expected a pointer from mamba._kernel.ptrs or None, got {type(obj).__name__}")


_P, _I64, _I32 = Pointer, ctypes.c_int64, ctypes.c_int
# Every exported function, as name -> argument types in the C prototype's
# order; each is built once per dtype as name_f32 and name_f64 and returns
# int (0, or 1 when a worker could not allocate its scratch).
# tests/mamba/test_kernel.py checks this table against the prototypes in the
# C source and the symbols the built library exports.
SIGNATURES: dict[str, list[type]] = {
    "scan_fwd": [_P] * 11 + [_I64] * 4 + [_I32] * 2,
    "scan_bwd": [_P] * 19 + [_I64] * 4 + [_I32] * 2,
    "conv_fwd": [_P, _I64] + [_P] * 3 + [_I64] * 4 + [_I32] * 2,
    "conv_bwd": [_P, _I64] + [_P] * 6 + [_I64] * 4 + [_I32] * 2,
}
DTYPE_SUFFIXES = ("f32", "f64")


def exported() -> dict[str, list[type]]:
    """The exported symbols with their argument types: {"scan_fwd_f32": [...], ...}."""
    return {f"{name}_{sfx}": argtypes for name, argtypes in SIGNATURES.items() for sfx in DTYPE_SUFFIXES}


def _declare(lib: ctypes.CDLL) -> None:
    for symbol, argtypes in exported().items():
        fn = getattr(lib, symbol)
        fn.argtypes = argtypes
        fn.restype = _I32


def _compiler() -> str | None:
    """The C compiler to build with: $CC, else cc, gcc or clang on PATH; None if none."""
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def _load() -> ctypes.CDLL | None:
    global _error
    cc = _compiler()
    if cc is None:
        _error = "no C compiler found (set CC, or install gcc/clang)"
        return None
    sources, cpu = _sources(), _cpu_signature()
    errors = []
    for flags in _flag_sets():
        out = _cache_dir() / f"scan_kernel-{_cache_key(cc, flags, cpu, sources)}.so"
        if not out.exists():
            err = _build(cc, flags, out)
            if err is not None:
                errors.append(err)
                continue
        lib = ctypes.CDLL(str(out))
        _declare(lib)
        return lib
    _error = "; ".join(errors)
    return None


def load() -> ctypes.CDLL | None:
    """The compiled kernel, built on first call; None if it cannot be built."""
    global _lib, _tried, _error
    with _lock:
        if not _tried:
            _tried = True
            try:
                _lib = _load()
            except OSError as exc:  # unwritable cache dir, failed dlopen
                _error = f"{type(exc).__name__}: {exc}"
                _lib = None
        return _lib


def load_error() -> str | None:
    """Why `load()` returned None (None when it did not)."""
    return _error


def ptrs(*tensors):
    """ctypes arguments for the kernel: data pointers, NULL for None."""
    return [None if t is None else ctypes.c_void_p(t.data_ptr()) for t in tensors]


def fail(who: str, what: str, shape: tuple) -> NoReturn:
    """Raise for a kernel call that returned non-zero: its only failure is a
    worker that could not allocate its scratch (see parallel_rows)."""
    raise MemoryError(f"{who}: the C kernel could not allocate its scratch ({what}, shape {shape}); "
                      "use a smaller batch or MAMBAFLOW_SCAN=torch")


def threads(work: int) -> int:
    """Threads for a call over `work` elements. Starting threads outweighs tiny
    calls such as one recurrent step; rows are independent and each is done by
    one thread, so results do not depend on this number."""
    return 1 if work < 1 << 15 else torch.get_num_threads()


def check_same_device_and_dtype(who: str, what: str, tensors: list[torch.Tensor]) -> None:
    """One device (the C kernel would read another device's pointers) and one dtype."""
    devices = {t.device for t in tensors}
    if len(devices) != 1:
        raise ValueError(f"{who}: {what} must be on one device, got {sorted(map(str, devices))}; "
                         "move them with .to(device) first")
    dtypes = {t.dtype for t in tensors}
    if len(dtypes) != 1:
        raise ValueError(f"{who}: {what} must share one dtype, got {sorted(map(str, dtypes))}; cast them first")
