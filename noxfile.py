"""nox sessions: tests per backend, a GPU session, lint and docs."""

import nox

nox.options.sessions = ["tests", "lint", "docs"]
TORCH = "torch==2.13.0"  # the CPU build (see README); a CUDA machine brings its own torch


@nox.session
@nox.parametrize("backend", ["numpy", "torch", "array_api_strict", "jax"])
def tests(session, backend):
    session.install("-e", ".[test]")
    if backend == "torch":
        session.install(TORCH)
    session.run("python", "-m", "pytest", "-q", "--full", env={"ENCANALYZE_BACKENDS": backend})


@nox.session(default=False, venv_backend="none")
def gpu(session):
    """CuPy and torch CUDA, in the current environment (which must have both)."""
    session.run(
        "python", "-m", "pytest", "-q", "--full", env={"ENCANALYZE_BACKENDS": "cupy,torch-cuda"}
    )


@nox.session
def lint(session):
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def docs(session):
    session.install("-e", ".", "sphinx")
    session.run("sphinx-build", "-W", "-q", "-b", "html", "docs", "docs/_build/html")
