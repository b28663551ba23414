# Only the product's Cython extension lives here; all metadata is in pyproject.toml.
from Cython.Build import cythonize
from setuptools import Extension, setup

setup(
    ext_modules=cythonize(
        # Array sizes come from the one layout definition (TP_MAX_LINKS).
        [Extension("fastpath.heartbeat", ["fastpath/heartbeat.pyx"],
                   include_dirs=["ebpf/lib"], depends=["ebpf/lib/layout.h"]),
         Extension("fastpath.detect", ["fastpath/detect.pyx"])],
        compiler_directives={"language_level": "3", "boundscheck": False, "wraparound": False},
    ),
)
