"""Builds fastprop._kernels from csrc/*.c and src/fastprop/_kernels.pyx.

Default flags are portable (-O3, no -march=native); FASTPROP_NATIVE=1 adds
-march=native for a local build tuned to this machine; FASTPROP_SANITIZE=1
builds with AddressSanitizer and UBSan for the memory-safety job.
"""
import glob
import os

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

compile_args = ["-O3", "-std=c11", "-fno-math-errno", "-ffp-contract=fast", "-Wall", "-Wno-unused-function", "-pthread"]
link_args = ["-pthread"]
if os.environ.get("FASTPROP_NATIVE") == "1":
    compile_args.append("-march=native")
options = {}
if os.environ.get("FASTPROP_SANITIZE") == "1":
    # every report is fatal (-fno-sanitize-recover); objects go to their own build folder,
    # so a sanitized build never reuses the normal build's objects or the reverse
    san = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g"]
    compile_args = [a for a in compile_args if a != "-O3"] + ["-O1"] + san
    link_args += san
    options = {"build": {"build_base": "build/sanitize"}}

# template.h includes the family files back, so compile only the families themselves
sources = ["src/fastprop/_kernels.pyx"] + sorted(glob.glob("csrc/*.c"))

# recorded in the extension for `python -m fastprop info`
define_macros = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"),
                 ("FP_BUILD_FLAGS", '"' + " ".join(compile_args).replace('"', "") + '"')]

ext = Extension(
    "fastprop._kernels",
    sources=sources,
    include_dirs=["csrc", np.get_include()],
    define_macros=define_macros,
    extra_compile_args=compile_args,
    extra_link_args=link_args,
)

setup(ext_modules=cythonize([ext], language_level=3), options=options)
