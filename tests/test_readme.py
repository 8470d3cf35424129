"""The README as a new user meets it: its Python runs, its install commands name real extras,
and the CI runs its commands.

Every ```python block of README.md is executed in order in one namespace, as a
user pasting them one after the other would; a failing block is reported with
its line in README.md.
"""

from __future__ import annotations

import re
import sys
import traceback
import warnings

import matplotlib
import pytest

from oracle import ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest depends on tomli before Python 3.11
    import tomli as tomllib

README = ROOT / "README.md"


def python_blocks(text: str) -> list[tuple[int, str]]:
    """The ```python fenced blocks of a Markdown text: (line of the first code line, code)."""
    blocks, code, start = [], None, 0
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if code is None:
            if re.fullmatch(r"```\s*python", stripped):
                code, start = [], lineno + 1
        elif stripped == "```":
            blocks.append((start, "\n".join(code)))
            code = None
        else:
            code.append(line)
    if code is not None:
        raise ValueError(f"README.md: the python block opened at line {start - 1} is not closed")
    return blocks


def run_blocks(blocks, namespace: dict, filename: str = "README.md") -> None:
    """Execute the blocks in order; a failure names the block's line and the failing line."""
    for start, code in blocks:
        # padded with blank lines so that tracebacks give the line numbers of the file
        compiled = compile("\n" * (start - 1) + code, filename, "exec")
        try:
            exec(compiled, namespace)
        except Exception:
            raise AssertionError(
                f"the python block at {filename} line {start} failed:\n{traceback.format_exc(limit=-3)}"
            ) from None
        finally:
            import matplotlib.pyplot as plt

            plt.close("all")


def test_python_blocks_are_found_with_their_lines():
    text = "intro\n```python\nx = 1\n```\n\n```bash\nls\n```\n``` python\ny = x + 1\nz = y\n```\n"
    assert python_blocks(text) == [(3, "x = 1"), (10, "y = x + 1\nz = y")]
    with pytest.raises(ValueError, match="line 2"):
        python_blocks("a\n```python\nx = 1\n")


def test_a_failing_block_is_reported_with_its_readme_line():
    ns: dict = {}
    with pytest.raises(AssertionError, match=r"block at README\.md line 10 failed") as info:
        run_blocks([(3, "x = 1"), (10, "y = x + 1\nz = undefined_name")], ns)
    assert 'README.md", line 11' in str(info.value) and "undefined_name" in str(info.value)
    assert ns["y"] == 2  # the blocks ran in order in one namespace


def test_readme_python_blocks_run_in_order(tmp_path, monkeypatch):
    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)  # figures a block saves land here
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 4
    namespace: dict = {"__name__": "__readme__"}
    with warnings.catch_warnings():
        # the README shows singular fits and LRT refits on purpose; warnings are not errors here
        warnings.simplefilter("ignore")
        run_blocks(blocks, namespace)
    # the quickstart's fit is lme4's sleepstudy fit
    from oracle import load_fit_reference

    fit = namespace["fit"]
    ref = load_fit_reference("sleepstudy_slope")["REML"]
    assert fit.objective == pytest.approx(ref["objective"], rel=1e-8)


# ---- install commands --------------------------------------------------------------------


def pyproject_extras() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def test_readme_install_commands_name_extras_that_exist():
    text = README.read_text()
    extras = pyproject_extras()
    named = re.findall(r"""pip install\s+["']?\.\[([^\]]*)\]""", text)
    assert {"gpu", "gpu-cuda12", "plot", "test"} <= {e.strip() for n in named for e in n.split(",")}
    for group in named:
        for extra in group.split(","):
            assert extra.strip() in extras, f'README installs ".[{extra}]", which pyproject.toml does not define'
    # and every extra of pyproject.toml is documented
    for extra in extras:
        assert f'".[{extra}]"' in text, f"extra {extra!r} of pyproject.toml is not in the README"


def test_readme_installs_from_the_repository_not_the_package_index():
    """jaxlmm is not on PyPI: no command may install it by name."""
    text = README.read_text()
    by_name = re.findall(r"""pip install\s+(?:-\S+\s+)*["']?jaxlmm\b""", text)
    assert not by_name, by_name
    assert "pip install .\n" in text or "pip install . " in text


def test_gpu_extras_follow_jax():
    extras = pyproject_extras()
    assert extras["gpu"] == ["jax[cuda13]"]
    assert extras["gpu-cuda12"] == ["jax[cuda12]"]
    text = README.read_text()
    assert "`jax[cuda13]`" in text and "`jax[cuda12]`" in text


def test_ci_runs_the_readme_commands():
    """.ci/run runs the README's first two commands as written (in a fresh clone and venv)."""
    first = re.search(r"```bash\n(.*?)```", README.read_text(), re.S).group(1).strip().splitlines()
    assert first[0].startswith("pip install . && jaxlmm fit")
    assert first[1] == 'pip install ".[test]" && python -m pytest -q'
    ci = (ROOT / ".ci" / "run").read_text()
    assert first[0] in ci
    assert any(line.startswith(first[1] + " ") or line == first[1] for line in ci.splitlines())
