"""mkdocs-gen-files script: writes the generated pages into the site at build time.

Nothing it writes is kept in the repository: the reference pages come from the code,
the changelog page from CHANGELOG.md and the example-config page from
config/retryd.example.toml, so each has exactly one source. The design page's layout
map is filled in from the package's docstrings (docs/gen/layout.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import mkdocs_gen_files

ROOT = Path(__file__).resolve().parents[2]
# mkdocs runs this file by path; the repository root makes `docs.gen` importable.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from docs.gen import layout, reference  # noqa: E402 - importable only once the root is on sys.path

PAGES = {
    "reference/settings.md": reference.settings_page,
    "reference/cli.md": reference.cli_page,
    "reference/metrics.md": reference.metrics_page,
    "reference/exit-codes.md": reference.exit_codes_page,
    "reference/console-api.md": reference.api_page,
}


def example_config_page() -> str:
    """The shipped example configuration, as a page."""
    text = (ROOT / "config" / "retryd.example.toml").read_text()
    return (
        "# Example configuration\n\n"
        "`config/retryd.example.toml`, as shipped: every setting with its default and a\n"
        "comment (a test keeps it complete). Start your own file from it; the\n"
        "[settings reference](settings.md) lists the same fields with their bounds.\n\n"
        f"```toml\n{text.rstrip()}\n```\n"
    )


def main() -> None:
    # The design page keeps its prose; its layout map is rendered from the docstrings.
    with mkdocs_gen_files.open("design.md", "r") as page:
        design = page.read()
    with mkdocs_gen_files.open("design.md", "w") as page:
        page.write(layout.with_layout_map(design))
    for path, render in PAGES.items():
        with mkdocs_gen_files.open(path, "w") as page:
            page.write(render())
    with mkdocs_gen_files.open("reference/example-config.md", "w") as page:
        page.write(example_config_page())
    with mkdocs_gen_files.open("changelog.md", "w") as page:
        page.write((ROOT / "CHANGELOG.md").read_text())


main()
