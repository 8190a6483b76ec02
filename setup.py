"""Build the optional C kernels (``encanalyze/_backends/native``); metadata is in pyproject.toml.

The extension is optional: where it cannot be compiled the install goes on and the library
takes its portable paths. Floating-point contraction stays off, so the kernels round as the
portable rules do, operation for operation.
"""

import sys

from setuptools import Extension, setup

FLAGS = (
    []
    if sys.platform == "win32"
    else ["-O3", "-ffp-contract=off", "-fno-fast-math", "-fno-trapping-math"]
)

setup(
    ext_modules=[
        Extension(
            "encanalyze._backends._cells",
            sources=[
                "encanalyze/_backends/native/cells.c",
                "encanalyze/_backends/native/histograms.c",
                "encanalyze/_backends/native/module.c",
            ],
            extra_compile_args=FLAGS,
            optional=True,
        )
    ]
)
