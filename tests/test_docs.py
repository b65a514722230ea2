"""The docs site and the README: generated reference pages that cover the code, a README that
stays short, examples that are valid, and a site that builds with warnings as errors."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel, Field

from docs.gen import layout, reference
from retryd import errors
from retryd.commands import cli
from retryd.models import ParkReason
from retryd.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
# "A README that fits on a few screens" (issue 10): about 8 KB.
README_MAX_BYTES = 8 * 1024


def _models_in(annotation: object) -> Iterator[type[BaseModel]]:
    """Settings classes held by a field, directly or as list items."""
    candidates = [annotation, *typing.get_args(annotation)]
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            yield candidate


def _setting_paths() -> set[tuple[str, str]]:
    """(table, field) of every leaf setting, nested rule tables included."""
    paths = set()
    pending: list[tuple[str, type[BaseModel]]] = []
    for group, field in Settings.model_fields.items():
        pending += [(group, model) for model in _models_in(field.annotation)]
    while pending:
        table, model = pending.pop()
        for name, field in model.model_fields.items():
            nested = list(_models_in(field.annotation))
            pending += [(f"{table}.{name}", sub) for sub in nested]
            paths.add((table, name))
    return paths


def test_settings_page_names_every_setting() -> None:
    """Every field of every settings group (and of each rule table) has a row on the page."""
    page = reference.settings_page()
    sections = re.split(r"^## ", page, flags=re.MULTILINE)
    missing = []
    for table, name in sorted(_setting_paths()):
        group = table.split(".")[0]
        section = next((s for s in sections if re.match(rf"`\[\[?{group}\]\]?`", s)), "")
        if f"| `{name}` |" not in section:
            missing.append(f"{table}.{name}")
    assert not missing, f"settings missing from the reference: {missing}"


def test_settings_page_gives_each_field_its_environment_variable() -> None:
    """A scalar field's row names RETRYD_<GROUP>__<FIELD>, the variable that overrides it."""
    page = reference.settings_page()
    assert "`RETRYD_SCHEDULE__INTERVAL_S`" in page
    assert "`RETRYD_GUARDS__ALLOW_TARGETS`" in page
    assert "`RETRYD_ROUTES (JSON)`" in page


def test_a_field_with_no_description_says_so() -> None:
    """The page takes a field's description, else the comment above it, else says there is none."""

    class Sample(BaseModel):
        described: int = Field(default=1, description="from the field")
        # from the comment
        commented: int = 2
        bare: int = 3

    comments = reference._comments_above_fields(Sample)
    fields = Sample.model_fields
    assert reference._describe(fields["described"], "described", comments) == "from the field"
    assert reference._describe(fields["commented"], "commented", comments) == "from the comment"
    assert reference._describe(fields["bare"], "bare", comments) == reference.NO_DESCRIPTION


def _leaf_commands(
    parser: argparse.ArgumentParser, prefix: str = "retryd"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                children = list(_leaf_commands(sub, f"{prefix} {name}"))
                yield from children or [(f"{prefix} {name}", sub)]


def test_cli_page_names_every_command_and_option() -> None:
    """Each command of the parser has its own section, listing each of its options."""
    page = reference.cli_page()
    found = list(_leaf_commands(cli.build_parser()))
    assert len(found) >= 8, "the parser walk found too few commands"
    for name, parser in found:
        assert f"\n## `{name}`" in page, f"{name} has no section"
        section = page.split(f"\n## `{name}`", 1)[1].split("\n## ", 1)[0]
        for action in parser._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert f"`{option}" in section, f"{name}: {option} is not documented"


def test_exit_code_page_covers_every_error_class() -> None:
    """Every exit code an error class can end a command with is on the exit-code page."""
    documented = {code for code, _ in reference.exit_codes()}
    assert 0 in documented
    pending: list[type[errors.RetrydError]] = [errors.RetrydError]
    while pending:
        error = pending.pop()
        assert int(error.exit_code) in documented, f"{error.__name__}: {error.exit_code}"
        pending += error.__subclasses__()
    page = reference.exit_codes_page()
    for code, _ in reference.exit_codes():
        assert f"\n| {code} |" in page


def _toml_blocks(text: str) -> list[str]:
    return re.findall(r"```toml\n(.*?)```", text, re.DOTALL)


def test_minimal_config_is_valid_and_the_same_in_readme_and_getting_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The minimal configuration shown first passes validation, and has a route, in both places."""
    for name in list(os.environ):
        if name.startswith("RETRYD_"):
            monkeypatch.delenv(name)
    readme = _toml_blocks(README.read_text())[0]
    getting_started = _toml_blocks((DOCS / "getting-started.md").read_text())[0]
    assert readme == getting_started
    config = tmp_path / "retryd.toml"
    config.write_text(readme)
    settings = load_settings(config)
    assert settings.routes, "the minimal configuration should show a [[routes]] entry"


def test_readme_is_short_and_keeps_the_ci_test_command() -> None:
    """The README fits on a few screens and holds the exact test command `.ci/run` runs."""
    text = README.read_text()
    assert len(text.encode()) <= README_MAX_BYTES, f"README.md is {len(text.encode())} bytes"
    ci = (ROOT / ".ci" / "run").read_text()
    command = next(
        line
        for line in ci.splitlines()
        if line.startswith("python3 -m venv .venv") and "pytest" in line
    )
    assert f"\n{command}\n" in text


def test_ci_runs_the_static_gates_before_the_suite_and_the_docs_after() -> None:
    """.ci/run's order: install, ruff, format, mypy (seconds), the suite (minutes), mkdocs."""
    lines = (ROOT / ".ci" / "run").read_text().splitlines()

    def first(fragment: str) -> int:
        return next(i for i, line in enumerate(lines) if line.startswith(fragment))

    order = [
        first(".venv/bin/pip install -e '.[dev]' -c constraints-dev.txt"),
        first(".venv/bin/ruff check ."),
        first(".venv/bin/ruff format --check ."),
        first(".venv/bin/mypy"),
        first("python3 -m venv .venv && "),
        next(i for i, line in enumerate(lines) if "mkdocs build --strict" in line),
    ]
    assert order == sorted(order), order


def test_readme_links_point_at_files_that_exist() -> None:
    """Every relative link in the README names a file of the repository."""
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README.read_text())
    relative = [link for link in links if "://" not in link]
    assert relative, "the README links to no docs page"
    missing = [link for link in relative if not (ROOT / link).exists()]
    assert not missing, f"README links to missing files: {missing}"


def test_site_builds_strictly(tmp_path: Path) -> None:
    """`mkdocs build --strict` passes: no broken link or anchor, no warning of any kind."""
    # The venv's own mkdocs first: the one that has this project's plugins installed.
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent)) or shutil.which("mkdocs")
    if mkdocs is None:
        pytest.skip("mkdocs is not installed (it is in the dev extra, so CI has it)")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "DISABLE_MKDOCS_2_WARNING": "true"}
    done = subprocess.run(
        [mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "WARNING" not in done.stderr, done.stderr
    for page in ("reference/settings", "reference/cli", "reference/metrics", "changelog"):
        assert (tmp_path / "site" / page / "index.html").exists(), f"{page} was not generated"


def test_every_package_and_module_opens_with_a_one_line_sentence() -> None:
    """Every retryd/ module's docstring opens with a one-line sentence (the map is made of them)."""
    assert layout.problems() == []


@pytest.mark.parametrize(
    ("source", "summary"),
    [
        ('"""Where a message goes back to."""\n', "Where a message goes back to."),
        (
            '"""`retryd plan`: what a cycle would do.\n\nMore.\n"""\n',
            "`retryd plan`: what a cycle would do.",
        ),
        ("X = 1\n", None),
        ('"""lower-case start."""\n', None),
        ('"""A first sentence that runs on\nto the next line."""\n', None),
        ('"""No full stop"""\n', None),
    ],
)
def test_a_summary_line_is_one_whole_sentence(
    tmp_path: Path, source: str, summary: str | None
) -> None:
    """Missing, wrapped, lower-case or unfinished first lines are refused; a sentence is kept."""
    module = tmp_path / "module.py"
    module.write_text(source)
    assert layout.summary_line(module) == summary


def test_the_design_page_takes_its_layout_map_from_every_module() -> None:
    """The design page has the map's marker once; the map names every module of retryd/."""
    design = (DOCS / "design.md").read_text()
    assert design.count(layout.MARKER) == 1
    page = layout.with_layout_map(design)
    for entry in layout.entries():
        if entry.path == layout.PACKAGE / "__init__.py":
            continue
        assert f"{entry.summary}" in page, entry.shown
    assert len(re.findall(r"^\*\*\d+\. ", page, re.MULTILINE)) == len(layout.LAYERS)


def test_no_page_keeps_a_hand_written_copy_of_the_layout() -> None:
    """Neither the design nor the development page lists retryd's packages by hand."""
    for name in ("design.md", "development.md"):
        text = (DOCS / name).read_text()
        assert not re.search(r"^\s+(drain|admission|targets)/\s{2,}\S", text, re.MULTILINE), name


def test_the_logs_page_names_every_cluster_event() -> None:
    """operations/logs.md has a row for every `cluster-*` event retryd/cluster logs."""
    logged = set()
    for module in (ROOT / "retryd" / "cluster").glob("*.py"):
        logged |= set(re.findall(r'log\.\w+\(\s*"(cluster-[a-z-]+)"', module.read_text()))
    page = (DOCS / "operations" / "logs.md").read_text()
    assert logged
    assert sorted(event for event in logged if f"`{event}`" not in page) == []


def test_the_coverage_page_has_no_blank_cell_and_names_every_park_it_promises() -> None:
    """Every row of the failure-record table fills every column; each reason it names exists."""
    text = (DOCS / "concepts" / "coverage.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("|")][2:]
    assert len(rows) >= 15
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert len(cells) == 5, row
        assert all(cells), row
    named = set(re.findall(r"\*\*park\*\* `([a-z-]+)`", text))
    assert named <= {reason.value for reason in ParkReason}
