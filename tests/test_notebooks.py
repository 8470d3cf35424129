"""The notebooks run end to end, and are committed with their outputs.

Each notebook checks its own numbers: its cells compare jaxlmm's estimates,
intervals and tests with lme4's (copied into the notebook as literals with
their source) or with closed forms, by ``np.testing.assert_allclose``, so an
execution that raises is a wrong number as much as a broken API. The kernel
is ``python3``, which jupyter_client maps to the interpreter running the
tests. A JAX compilation cache shared by the notebooks of one session saves
recompiling the same shapes in each kernel (it changes no number), and the
kernels run XLA's CPU kernels single-threaded
(``--xla_cpu_multi_thread_eigen=false``): XLA's multi-threaded Eigen pool
can wedge on long vmapped computations on small shared machines.
"""

from __future__ import annotations

import copy
import os

import nbformat
import pytest
from nbclient import NotebookClient

from oracle import ROOT

NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = {
    "01_sleepstudy": 5,  # figures each notebook draws
    "02_variance_component_test": 2,
    "03_intervals": 3,
    "04_insteval": 2,
}
MAX_BYTES = 1_000_000


def _path(name: str):
    return NOTEBOOK_DIR / f"{name}.ipynb"


def _figures(nb) -> int:
    return sum(
        "image/png" in out.get("data", {})
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.outputs
    )


def _errors(nb) -> list[str]:
    return [
        f"{out.ename}: {out.evalue}"
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.outputs
        if out.output_type == "error"
    ]


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    """Environment of the notebook kernels: a compilation cache shared between them."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path_factory.mktemp("jax_cache")))
        mp.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
        mp.setenv("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
        mp.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_cpu_multi_thread_eigen" not in flags:
            mp.setenv("XLA_FLAGS", f"{flags} --xla_cpu_multi_thread_eigen=false".strip())
        yield


def test_the_notebooks_are_these():
    assert sorted(p.stem for p in NOTEBOOK_DIR.glob("*.ipynb")) == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", list(NOTEBOOKS))
def test_committed_with_outputs(name):
    """Readers on the web see every output: each code cell ran, in order, without error."""
    path = _path(name)
    assert path.stat().st_size < MAX_BYTES
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
    assert _errors(nb) == []
    assert _figures(nb) == NOTEBOOKS[name]


@pytest.mark.parametrize("name", list(NOTEBOOKS))
def test_notebook_runs(name, kernel_env):
    nb = copy.deepcopy(nbformat.read(_path(name), as_version=4))
    client = NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK_DIR)}}
    )
    client.execute()  # raises CellExecutionError, naming the cell, if any cell fails
    assert _errors(nb) == []
    assert _figures(nb) == NOTEBOOKS[name]
