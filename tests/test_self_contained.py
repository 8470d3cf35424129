"""The repository needs nothing beside it: no file points outside the clone for data or references."""

from __future__ import annotations

import json

from oracle import REF, ROOT

# spelled in pieces so that this file does not match itself
FORBIDDEN = ("../" + "shared", "JAXLMM_" + "REFERENCE")
FOLDERS = ("jaxlmm", "tests", "benchmarks", "notebooks", ".ci")
SKIP_DIRS = {"__pycache__", ".ipynb_checkpoints", ".pytest_cache", ".hypothesis"}


def _files():
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*")):
            if path.is_file() and not SKIP_DIRS.intersection(path.relative_to(ROOT).parts):
                yield path


def test_no_file_refers_to_data_outside_the_repository():
    files = list(_files())
    # the scan sees the package, the tests and this file itself
    names = {p.relative_to(ROOT).as_posix() for p in files}
    assert {"jaxlmm/__init__.py", "tests/conftest.py", "tests/test_self_contained.py", ".ci/run"} <= names
    found = []
    for path in files:
        text = path.read_bytes().decode("utf-8", errors="replace")
        for word in FORBIDDEN:
            for lineno, line in enumerate(text.splitlines(), 1):
                if word in line:
                    found.append(f"{path.relative_to(ROOT)}:{lineno}: {word}")
    assert not found, "references to files outside the repository:\n" + "\n".join(found)


def test_reference_folder_is_inside_the_repository():
    assert REF == ROOT / "tests" / "reference"
    fits = sorted(p.stem for p in (REF / "fits").glob("*.json"))
    assert len(fits) == 8
    for name in ("objective_at_theta.json", "inference/inference.json", "datasets.json"):
        assert json.loads((REF / name).read_text())
    # every reference file is written by the script kept beside them
    script = (REF / "make_reference.R").read_text()
    for case in fits:
        assert f"{case} = list(" in script, case
    assert 'list.files(here, pattern = "[.]R$")' in script  # it runs the other X.R scripts
    for path in REF.rglob("*.json"):
        written = path.name in script or f"{path.stem} = list(" in script or (REF / f"{path.stem}.R").is_file()
        assert written, f"{path.relative_to(REF)} is written neither by make_reference.R nor by an R script beside it"
