"""notebooks/par_xl_end_to_end.ipynb: it runs headless in the tiny setting, and the outputs
committed with it come from a run of the committed code.

The run executes every cell with nbclient in a kernel of this Python (a kernelspec written to a
temporary directory; `notebooks/execute_notebook.py`, which also refreshes the committed
outputs), for 250 steps; a failing cell fails the test with the cell's traceback.
"""

import importlib.util
import json
import tempfile
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "par_xl_end_to_end.ipynb"
REFRESH = "run `.venv/bin/python notebooks/execute_notebook.py --write` and commit the notebook"
MAX_BYTES = 1_500_000


def load_executor():
    spec = importlib.util.spec_from_file_location(
        "execute_notebook", REPO / "notebooks" / "execute_notebook.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


executor = load_executor()


@pytest.fixture(scope="module")
def committed():
    return nbformat.read(NOTEBOOK, as_version=4)


def code_cells(notebook):
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def output_kinds(notebook):
    """Per code cell, what its outputs show besides text: pictures, tables, errors."""
    kinds = []
    for cell in code_cells(notebook):
        shown = set()
        for output in cell.outputs:
            if output.output_type == "error":
                shown.add("error")
            shown.update(mime for mime in output.get("data", {}) if not mime.startswith("text/p"))
        kinds.append(sorted(shown))
    return kinds


def output_texts(notebook):
    """Every text the outputs hold (streams, plain text, HTML, tracebacks), pictures left out."""
    for cell in code_cells(notebook):
        for output in cell.outputs:
            if output.output_type == "stream":
                yield output.text
            elif output.output_type == "error":
                yield "\n".join(output.traceback)
            for mime, value in output.get("data", {}).items():
                if mime.startswith("text/"):
                    yield value if isinstance(value, str) else json.dumps(value)


# The committed notebook (no kernel).


def test_committed_outputs_come_from_the_committed_code(committed):
    recorded = committed.metadata.get("par_xl", {}).get("executed_code_sha256")
    assert recorded == executor.code_sha256(committed), f"stale outputs: {REFRESH}"
    counts = [cell.execution_count for cell in code_cells(committed)]
    assert counts == list(range(1, len(counts) + 1)), f"not one run from the top: {REFRESH}"
    parameters = committed.cells[executor.parameters_cell(committed)].source
    assert 'SETTING = "tiny"' in parameters  # the outputs are those of the tiny setting


def test_committed_outputs_show_the_pictures_and_no_error(committed):
    kinds = [kind for cell in output_kinds(committed) for kind in cell]
    assert "error" not in kinds
    assert kinds.count("image/png") >= 4 and "image/gif" in kinds  # curve, search, heat map, bars
    assert "text/html" in kinds  # the tables
    assert NOTEBOOK.stat().st_size < MAX_BYTES


def test_committed_outputs_hold_no_local_path_or_traceback(committed):
    local = {str(REPO), f"{tempfile.gettempdir()}/", "/home/", "/root/", "site-packages"}
    if len(REPO.parent.parts) > 1:
        local.add(f"{REPO.parent}/")  # the shared data, the venv beside the repository
    for text in output_texts(committed):
        assert "Traceback" not in text, text
        for path in local:
            assert path not in text, f"{path!r} in the committed outputs: {text[:500]}"


# The run.


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_notebook_runs_headless_and_shows_what_is_committed(committed, wikitext2_dir, tmp_path):
    # 250 of the tiny setting's 938 steps: validations at 200 and 250, every cell's outputs.
    parameters = {"SETTING": "tiny", "MAX_STEPS": 250, "WIKITEXT2_DIR": str(wikitext2_dir)}
    executed = executor.execute(working_directory=tmp_path, parameters=parameters)

    # What ran is the committed code, the injected parameters aside.
    index = executor.parameters_cell(committed)
    ran, kept = executed.cells, committed.cells
    assert ran[index].source.startswith(kept[index].source)
    assert [c.source for c in ran[:index] + ran[index + 1 :]] == [
        c.source for c in kept[:index] + kept[index + 1 :]
    ]
    # The committed outputs show what this run shows: the same pictures and tables in each cell.
    assert output_kinds(executed) == output_kinds(committed), f"stale outputs: {REFRESH}"
    results = json.loads((tmp_path / "par_xl_notebook/runs/tiny/results.json").read_text())
    assert results["validation_history"][-1]["loss"] < results["validation_history"][0]["loss"]
