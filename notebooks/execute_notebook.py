r"""Runs `par_xl_end_to_end.ipynb` headless, with a kernel of this Python, as the tests do.

    .venv/bin/python notebooks/execute_notebook.py           # run it; the repository is untouched
    .venv/bin/python notebooks/execute_notebook.py --write   # and refresh its committed outputs

The kernel is this interpreter (its kernelspec is written to a temporary directory, so no
Jupyter installation elsewhere is used) and imports this checkout's `par_xl` (PYTHONPATH). It
runs in a temporary working directory, so the notebook's `WORK_DIR` (data, runs) lands there
and its outputs hold only relative paths. A failing cell raises `CellExecutionError`.

WikiText-2 comes from $WIKITEXT2_DIR, else from ../shared/data/wikitext-2 beside the
repository (as for the tests), else the notebook downloads it. `--write` stores the outputs in
the notebook, with the SHA-256 of the code it ran in the notebook's metadata
(`par_xl.executed_code_sha256`): `tests/test_notebook.py` checks that the committed outputs
come from the committed code. Commit the notebook after running it.
"""

import argparse
import contextlib
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat

NOTEBOOK = Path(__file__).resolve().with_name("par_xl_end_to_end.ipynb")
REPO = NOTEBOOK.parents[1]
KERNEL_NAME = "par-xl-notebook"
PARAMETERS_TAG = "parameters"
CELL_TIMEOUT = 300  # seconds for one cell; the whole tiny run takes about two minutes


def parameters_cell(notebook):
    """The index of the cell tagged `parameters` (papermill's convention)."""
    for index, cell in enumerate(notebook.cells):
        if PARAMETERS_TAG in cell.get("metadata", {}).get("tags", []):
            return index
    raise ValueError(f"{NOTEBOOK.name} has no cell tagged {PARAMETERS_TAG!r}.")


def inject_parameters(notebook, parameters):
    """Appends `NAME = value` lines to the parameters cell, which override its defaults."""
    if parameters:
        cell = notebook.cells[parameters_cell(notebook)]
        lines = [f"{name} = {value!r}" for name, value in parameters.items()]
        cell.source = cell.source.rstrip("\n") + "\n# Injected:\n" + "\n".join(lines)


def code_sha256(notebook):
    """SHA-256 of the notebook's code cells' sources, in order."""
    sources = [cell.source for cell in notebook.cells if cell.cell_type == "code"]
    return hashlib.sha256(json.dumps(sources).encode()).hexdigest()


@contextlib.contextmanager
def kernel_of_this_python(directory):
    """A kernelspec `KERNEL_NAME` running `sys.executable`, visible to Jupyter inside the block
    (JUPYTER_PATH)."""
    from ipykernel.kernelspec import install

    install(kernel_name=KERNEL_NAME, prefix=str(directory))
    saved = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = os.pathsep.join(
        filter(None, [str(Path(directory, "share", "jupyter")), saved])
    )
    try:
        yield KERNEL_NAME
    finally:
        if saved is None:
            os.environ.pop("JUPYTER_PATH", None)
        else:
            os.environ["JUPYTER_PATH"] = saved


def kernel_environment():
    """The kernel's environment: this one, with this checkout's par_xl first on the path (an
    editable install may point elsewhere), without pytest's marker (under it, ipykernel would
    not capture output written to the file descriptors)."""
    environment = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    environment["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")])
    )
    return environment


def execute(notebook_path=NOTEBOOK, working_directory=None, parameters=None,
            timeout=CELL_TIMEOUT):  # fmt: skip
    """Executes the notebook; returns the executed copy (a `NotebookNode`, outputs in it).

    Runs in `working_directory` (default: a temporary directory, removed afterwards), with
    `parameters` (a dict) overriding the parameters cell's defaults.
    """
    from nbclient import NotebookClient

    notebook = nbformat.read(notebook_path, as_version=4)
    inject_parameters(notebook, parameters)
    with contextlib.ExitStack() as stack:
        kernels = stack.enter_context(tempfile.TemporaryDirectory(prefix="par_xl_kernel_"))
        if working_directory is None:
            working_directory = stack.enter_context(
                tempfile.TemporaryDirectory(prefix="par_xl_notebook_")
            )
        kernel_name = stack.enter_context(kernel_of_this_python(kernels))
        client = NotebookClient(
            notebook,
            timeout=timeout,
            kernel_name=kernel_name,
            resources={"metadata": {"path": str(working_directory)}},
            record_timing=False,
        )
        client.execute(env=kernel_environment())
    return notebook


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true",
                        help="store the outputs in the notebook (to commit them)")  # fmt: skip
    arguments = parser.parse_args()
    shared = REPO.parent / "shared" / "data" / "wikitext-2"  # as tests/conftest.py finds it
    if "WIKITEXT2_DIR" not in os.environ and (shared / "train.txt").is_file():
        os.environ["WIKITEXT2_DIR"] = str(shared)
    start = time.perf_counter()
    executed = execute()
    print(f"executed {NOTEBOOK.name} in {time.perf_counter() - start:.0f} s")
    if arguments.write:
        executed.metadata["par_xl"] = {"executed_code_sha256": code_sha256(executed)}
        nbformat.write(executed, NOTEBOOK)
        print(f"wrote {NOTEBOOK} ({NOTEBOOK.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    sys.exit(main())
