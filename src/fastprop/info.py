"""``python -m fastprop info``: what a bug report needs to say about this installation."""
from __future__ import annotations
import os
import platform
import sys

import numpy as np
import scipy

from . import _kernels, blas
from ._version import __version__
from typing import Any, TextIO

__all__ = ["info", "print_info"]


def _blas() -> str:
    """SciPy's BLAS (the one fastprop's kernels call) and its thread count."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        threadpool_info = None
    if threadpool_info is not None:
        import scipy.linalg  # noqa: F401 (loads the BLAS that the kernels use)
        pools = [p for p in threadpool_info() if p.get("user_api") == "blas"]
        # SciPy's own copy first: NumPy may bundle another one
        pools.sort(key=lambda p: "scipy" not in p.get("filepath", ""))
        for p in pools:
            where = "SciPy's copy" if "scipy" in p.get("filepath", "") else p.get("filepath")
            return (f"{p.get('internal_api')} {p.get('version')} ({where}, "
                    f"{p.get('threading_layer', '?')}), {p.get('num_threads')} threads, "
                    f"kernel {p.get('architecture', '?')}")
    try:
        blas = scipy.show_config(mode="dicts")["Build Dependencies"]["blas"]
        name = f"{blas.get('name')} {blas.get('version')}"
    except Exception:  # show_config's layout differs between SciPy versions
        name = "unknown"
    threads = os.environ.get("OPENBLAS_NUM_THREADS", "the BLAS default")
    return f"{name} (SciPy's), threads: {threads} (pip install threadpoolctl for the live count)"


def info() -> dict[str, Any]:
    """Return the facts ``python -m fastprop info`` prints.

    Returns
    -------
    dict of str to str
        Versions, build, SIMD clone, BLAS and threads.

    Examples
    --------
    >>> from fastprop.info import info
    >>> {"fastprop", "numpy", "blas"} <= set(info())
    True
    """
    build = _kernels.build_info()
    return {
        "fastprop": __version__,
        "location": os.path.dirname(os.path.abspath(__file__)),
        "python": f"{platform.python_implementation()} {platform.python_version()} ({sys.executable})",
        "platform": f"{platform.system()} {platform.release()} {platform.machine()}",
        "cpus": str(os.cpu_count()),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "compiler": build["compiler"],
        "flags": build["flags"],
        "simd clone": build["simd"],
        "blas": _blas(),
        "gemm backend": f"{blas.get_blas()} (set_blas / FASTPROP_BLAS; available: "
                        f"{', '.join(blas.available_blas())})",
        "small gemm": f"m·n·k <= {blas.small_gemm_threshold()} on fastprop's own kernel "
                      "(calibrate_small_gemm / FASTPROP_SMALL_GEMM_MAX)",
        "fastprop threads": f"{_kernels.get_num_threads()} (set_num_threads / FASTPROP_NUM_THREADS; "
                            "only for optimizer passes of >= 2^20 elements)",
    }


def print_info(file: TextIO | None = None) -> None:
    """Print :func:`info`, one ``name: value`` line each.

    Parameters
    ----------
    file : text file, optional
        Where to print (default: sys.stdout).

    Examples
    --------
    >>> import io
    >>> from fastprop.info import print_info
    >>> out = io.StringIO()
    >>> print_info(out)
    >>> "fastprop:" in out.getvalue()
    True
    """
    facts = info()
    width = max(map(len, facts))
    for name, value in facts.items():
        print(f"{name:>{width}}: {value}", file=file or sys.stdout)
