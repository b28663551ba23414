# Only the product's Cython extension lives here; all metadata is in pyproject.toml.
from Cython.Build import cythonize
from setuptools import Extension, setup

setup(
    ext_modules=cythonize(
        [Extension("fastpath.heartbeat", ["fastpath/heartbeat.pyx"])],
        compiler_directives={"language_level": "3", "boundscheck": False, "wraparound": False},
    ),
)
