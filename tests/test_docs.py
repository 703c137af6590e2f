"""The README's promises: its two commands come first, and CI runs its test command."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from hypothesis.configuration import storage_directory

from hermes_api import errors

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def first_commands() -> list[str]:
    block = re.search(r"```sh\n(.*?)```", README, re.S).group(1)
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def test_readme_starts_with_run_and_test_commands() -> None:
    run, test = first_commands()
    assert "hermes-api demo" in run and "pytest" in test
    assert README.index("```sh") < README.index("## ")


def test_ci_runs_the_readme_test_command() -> None:
    _, test = first_commands()
    assert test in (ROOT / ".ci" / "run").read_text()


def test_error_table_lists_every_error_code() -> None:
    codes = {
        cls.code
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.HermesAPIError) and cls.code
    }
    table = README.split("## Errors", 1)[1].split("\n## ", 1)[0]
    missing = {code for code in codes if code not in table}
    assert missing == set(), missing


PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_readme_says_which_python_and_announces_the_llama_cpp_build() -> None:
    """Before: nothing said Python 3.11 (pip on 3.10 backtracked for minutes), and the
    build hid behind pip's spinner. Now the intro says both, and the run command itself
    prints the wait before pip starts compiling."""
    version = PYPROJECT["project"]["requires-python"].removeprefix(">=")
    intro = README.split("\n## ", 1)[0]
    assert f"Python >= {version}" in intro and f"Python {version} or newer" in intro
    assert "C/C++ compiler" in intro and "build-essential" in intro
    run, _ = first_commands()
    announced = re.search(r"echo '([^']*)' && (CMAKE_ARGS=\S+ )?\.venv/bin/pip install", run)
    assert announced and "compiles llama.cpp" in announced.group(1) and "4 minutes" in announced.group(1)
    assert run.index("echo ") < run.index("pip install")


def test_both_readme_commands_build_llama_cpp_for_any_cpu() -> None:
    """llama-cpp-python builds for the build machine's CPU by default, and that build
    crashes on CPUs with AMX on the first multi-token decode: both commands (and so CI,
    which runs the test command verbatim, and e2e/setup.sh) build the portable one, and
    the README says why."""
    for command in first_commands():
        assert "CMAKE_ARGS=-DGGML_NATIVE=OFF .venv/bin/pip install -e '.[" in command
    assert "CMAKE_ARGS=-DGGML_NATIVE=OFF" in (ROOT / "e2e" / "setup.sh").read_text()
    why = README.split("**Why `CMAKE_ARGS=-DGGML_NATIVE=OFF`.**", 1)[1].split("\n\n", 1)[0]
    assert "AMX" in why and "pip cache remove llama_cpp_python" in why


def test_readme_never_suggests_an_install_from_pypi() -> None:
    assert "pip install hermes-api" not in README and "hermes-api[" not in README
    assert "hermes-api is not published on PyPI" in README


def test_development_section_has_the_everyday_loop_and_the_whole_one() -> None:
    """``slow`` is registered, the everyday loop leaves it out, and the README's test
    command (plain ``pytest``, as CI runs it) deselects nothing."""
    options = PYPROJECT["tool"]["pytest"]["ini_options"]
    assert {m.split(":")[0] for m in options["markers"]} >= {"slow", "e2e"}
    assert "-m" not in options["addopts"].split()
    development = README.split("## Development", 1)[1]
    assert '.venv/bin/pytest -m "not slow and not e2e"' in development
    _, test = first_commands()
    assert test.endswith(".venv/bin/pytest")


def test_hypothesis_keeps_its_caches_outside_the_work_tree() -> None:
    """Hypothesis (under schemathesis) writes to ``./.hypothesis`` unless told
    otherwise; tests/conftest.py points it at the tests' cache directory."""
    home = storage_directory("examples", intent_to_write=False).home_directory.resolve()
    assert not home.is_relative_to(ROOT)


DOCS = ROOT / "docs"
CONTRACT = (DOCS / "contract.md").read_text()
ARCHITECTURE = (DOCS / "architecture.md").read_text()


def section(text: str, heading: str) -> str:
    """The body of the ``## heading`` section of a Markdown text."""
    return text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


def table_rows(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("|")]


def test_error_tables_of_readme_and_contract_are_the_same() -> None:
    """docs/contract.md §5 is the contract's error table and the README shows it too:
    a row added to one and not the other fails here."""
    readme = table_rows(section(README, "Errors"))
    contract = table_rows(section(CONTRACT, "5. Errors"))
    assert len(contract) > 20
    assert readme == contract


def test_architecture_module_map_names_every_module() -> None:
    package = ROOT / "hermes_api"
    modules = {str(p.relative_to(package)) for p in package.rglob("*.py") if "example_home" not in p.parts}
    module_map = section(ARCHITECTURE, "Module map")
    missing = {m for m in modules if f"`{m}`" not in module_map}
    assert missing == set(), missing


def test_citations_of_the_docs_name_sections_that_exist() -> None:
    """``docs/contract.md §3`` and ``docs/contract.md, "Chat completions"`` in the code
    and tests name a numbered section or a heading of that file."""
    docs = {"contract.md": CONTRACT, "architecture.md": ARCHITECTURE}
    headings = {name: re.findall(r"^#+ (.+)$", text, re.M) for name, text in docs.items()}
    numbers = {name: {h.split(".")[0] for h in found if re.match(r"\d+\. ", h)} for name, found in headings.items()}
    sources = [*(ROOT / "hermes_api").rglob("*.py"), *(ROOT / "tests").glob("*.py"), *(ROOT / "e2e").glob("*.py")]
    cited = 0
    for path in sources:
        text = re.sub(r"\s+", " ", path.read_text())
        for name, number in re.findall(r"docs/(contract\.md|architecture\.md) §(\d+)", text):
            assert number in numbers[name], (path.name, name, number)
            cited += 1
        for name, title in re.findall(r'docs/(contract\.md|architecture\.md), "([^"]+)"', text):
            assert title in headings[name], (path.name, name, title)
            cited += 1
    assert cited > 10


def test_nothing_cites_files_outside_the_repository() -> None:
    """The repository stands on its own: no code, test or doc points at notes that are not
    in it (the project's early design notes lived beside the repository)."""
    outside = re.compile(r"DESIGN\.md|STYLE\.md|openai-wire\.md|shared/recipes|\.\./shared/")
    paths = [p for p in ROOT.rglob("*") if p.suffix in {".py", ".md", ".yaml", ".yml", ".sh", ".toml"}]
    paths = [p for p in paths if not {".venv", ".git", "node_modules", "artifacts"} & set(p.relative_to(ROOT).parts)]
    this = Path(__file__).resolve()
    found = [f"{p.relative_to(ROOT)}: {m[0]}" for p in paths if p != this for m in [outside.search(p.read_text())] if m]
    assert found == []
    assert len(paths) > 50
