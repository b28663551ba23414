# Only the Cython extensions live here; all metadata is in pyproject.toml.
from Cython.Build import cythonize
from setuptools import Extension, setup

setup(
    ext_modules=cythonize(
        [Extension("fastpath.heartbeat", ["fastpath/heartbeat.pyx"]),
         Extension("fastpath.pacer", ["fastpath/pacer.pyx"])],
        compiler_directives={"language_level": "3", "boundscheck": False, "wraparound": False},
    ),
)
