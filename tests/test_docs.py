"""The documentation site: its snippets run, its API pages cover the public names, and it builds.

Every fenced ``python`` block of every page under ``docs/`` is executed, the blocks of one page in
order in one namespace (so a later block may use the names of an earlier one). Blocks that must not
run (training commands, shell sessions) are fenced as ``bash`` or ``text``.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import vdblocks

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
API = DOCS / "api"

# A fence opens with ``` (or more backticks) at the start of a line, optionally followed by a language.
_FENCE = re.compile(r"^(?P<fence>`{3,})(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^(?P=fence)[ \t]*$", re.S | re.M)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(line number, source)`` of every top-level ```python block of a markdown text."""
    return [
        (text.count("\n", 0, m.start()) + 2, m.group("body"))
        for m in _FENCE.finditer(text)
        if m.group("lang") == "python"
    ]


PAGES = sorted(DOCS.rglob("*.md"))
PAGES_WITH_CODE = [p for p in PAGES if python_blocks(p.read_text(encoding="utf-8"))]


def test_fence_parser_finds_blocks_and_skips_other_languages() -> None:
    text = "intro\n```python\na = 1\n```\n\n```bash\nexit 1\n```\n````python\nb = a + 1\n````\n"
    blocks = python_blocks(text)
    assert [src for _, src in blocks] == ["a = 1\n", "b = a + 1\n"]
    assert blocks[0][0] == 3  # the first line of the block's body


@pytest.mark.parametrize("page", PAGES_WITH_CODE, ids=lambda p: str(p.relative_to(DOCS)))
def test_page_snippets_run(page: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Snippets that write files write them under a fresh directory; seeds make them deterministic.
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    namespace: dict[str, object] = {"__name__": f"docs_{page.stem}"}
    rel = page.relative_to(ROOT)
    for line, source in python_blocks(page.read_text(encoding="utf-8")):
        code = compile("\n" * (line - 1) + source, str(rel), "exec")  # tracebacks point at the page
        exec(code, namespace)


def test_every_block_page_has_a_snippet() -> None:
    pages = sorted((DOCS / "blocks").glob("*.md"))
    assert pages
    assert set(pages) <= set(PAGES_WITH_CODE), [p.name for p in pages if p not in PAGES_WITH_CODE]


def rendered_modules() -> set[str]:
    """Modules rendered with ``::: module`` on the API pages."""
    found = set()
    for page in API.glob("*.md"):
        found |= set(re.findall(r"^::: *([\w.]+)", page.read_text(encoding="utf-8"), re.M))
    return found


def test_every_public_name_is_on_the_api_pages() -> None:
    text = "\n".join(p.read_text(encoding="utf-8") for p in API.glob("*.md"))
    missing = [name for name in vdblocks.__all__ if not re.search(rf"\b{re.escape(name)}\b", text)]
    assert not missing, f"names of vdblocks.__all__ not mentioned in docs/api/: {missing}"


def test_every_public_name_is_rendered_from_its_defining_module() -> None:
    modules = rendered_modules()
    undocumented = []
    for name in vdblocks.__all__:
        obj = getattr(vdblocks, name)
        home = importlib.import_module(obj.__module__)
        if obj.__module__ not in modules or name not in getattr(home, "__all__", ()):
            undocumented.append(f"{name} ({obj.__module__})")
    assert not undocumented, f"not rendered by a '::: module' directive in docs/api/: {undocumented}"


def test_every_public_module_is_rendered() -> None:
    modules = rendered_modules()
    public = [
        f"{pkg}.{path.stem}"
        for pkg in ("vdblocks.layers", "vdblocks.attention", "vdblocks.diffusion")
        for path in (ROOT / pkg.replace(".", "/")).glob("*.py")
        if not path.stem.startswith("_")
    ] + ["vdblocks.flops"]
    assert sorted(set(public) - modules) == []


def nav_pages() -> list[str]:
    """The page paths of mkdocs.yml's nav (entries ``- Title: path.md``), in order."""
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    nav = config[config.index("\nnav:") :]
    nav = nav[: re.search(r"\n\S", nav[1:]).start() + 1]  # up to the next top-level key
    return re.findall(r"^\s*- [^\n]*?:\s*(\S+\.md)\s*$", nav, re.M)


def test_nav_lists_every_page_and_only_existing_ones() -> None:
    nav = nav_pages()
    assert "index.md" in nav
    assert len(nav) == len(set(nav)), "a page is listed twice in the nav"
    on_disk = {str(p.relative_to(DOCS)) for p in PAGES}
    assert sorted(set(nav) - on_disk) == [], "nav entries without a page"
    assert sorted(on_disk - set(nav)) == [], "pages missing from the nav"


@pytest.mark.skipif(
    not all(
        importlib.util.find_spec(m) for m in ("mkdocs", "mkdocstrings", "mkdocstrings_handlers.python", "material")
    ),
    reason="mkdocs, mkdocstrings[python] and mkdocs-material are not installed (the docs extra)",
)
def test_site_builds_strict_without_warnings(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    assert "WARNING" not in log, log
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "api" / "blocks" / "index.html").is_file()


def test_etc_probe_figures_are_rendered_from_the_committed_run_report():
    """docs/systems/etc.md shows the probe figures of a committed run report, never typed by hand."""
    from reference_models.common.probe import render_run_table

    report = json.loads((ROOT / "docs" / "systems" / "etc_probe" / "probe.json").read_text())
    page = (ROOT / "docs" / "systems" / "etc.md").read_text()
    block = page.split("<!-- probe-run:start -->\n", 1)[1].split("\n<!-- probe-run:end -->", 1)[0]
    assert block == render_run_table(report)
    assert (ROOT / "docs" / "systems" / "etc_probe" / "probe_grid.png").is_file()


SYSTEMS_DOCS = DOCS / "systems"
CMD_REPORT = SYSTEMS_DOCS / "cmd_probe" / "probe.json"  # <out>/probe.json of `python examples/train_cmd.py`
PVDM_REPORT = SYSTEMS_DOCS / "pvdm_probe" / "probe.json"  # <out>/probe.json of `python examples/train_pvdm.py`
EVDM_REPORTS = SYSTEMS_DOCS / "evdm_probe"  # samples/step<N>_{predict,interpolate}_metrics.json of train_evdm.py


def _probe_run_block(page: Path) -> str:
    text = page.read_text(encoding="utf-8")
    return text.split("<!-- probe-run:start -->\n", 1)[1].split("\n<!-- probe-run:end -->", 1)[0]


@pytest.mark.parametrize(
    "system, source",
    [
        ("etc", "etc_probe/probe.json"),
        ("cmd", "cmd_probe/probe.json"),
        ("pvdm", "pvdm_probe/probe.json"),
        ("evdm", "evdm_probe/*_metrics.json"),
    ],
)
def test_system_pages_have_one_probe_run_block_and_say_how_it_is_rendered(system, source):
    page = (SYSTEMS_DOCS / f"{system}.md").read_text(encoding="utf-8")
    assert page.count("<!-- probe-run:start -->") == 1 and page.count("<!-- probe-run:end -->") == 1
    assert page.index("<!-- probe-run:start -->") < page.index("<!-- probe-run:end -->")
    command = f"python -m reference_models.common.probe --run-report docs/systems/{source}"
    assert command in " ".join(page.split()), f"{system}.md does not name the command that renders its block"


def test_cmd_probe_figures_are_rendered_from_the_committed_run_report():
    """docs/systems/cmd.md shows the per-class figures of a committed run report, never typed by hand."""
    from reference_models.common.probe import render_run_table

    report = json.loads(CMD_REPORT.read_text(encoding="utf-8"))
    assert _probe_run_block(SYSTEMS_DOCS / "cmd.md") == render_run_table(report, kind="cmd")


def test_pvdm_probe_figures_are_rendered_from_the_committed_run_report():
    """docs/systems/pvdm.md shows the long-video figures of a committed run report, never typed by hand."""
    from reference_models.common.probe import render_run_table

    report = json.loads(PVDM_REPORT.read_text(encoding="utf-8"))
    assert _probe_run_block(SYSTEMS_DOCS / "pvdm.md") == render_run_table(report, kind="pvdm")


def test_evdm_baseline_figures_are_rendered_from_the_committed_metrics():
    """docs/systems/evdm.md shows model vs baselines from a run's committed metrics files, never typed by hand."""
    from reference_models.common.probe import render_run_table
    from reference_models.common.probe.run_report import load_run_report

    report = load_run_report(sorted(EVDM_REPORTS.glob("*_metrics.json")))
    assert set(report["tasks"]) == {"predict", "interpolate"}  # tiny_evdm scores both tasks
    assert _probe_run_block(SYSTEMS_DOCS / "evdm.md") == render_run_table(report, kind="evdm")


def test_custom_architecture_probe_figures_are_rendered_from_the_committed_run_report():
    """docs/custom-architecture.md shows the probe figures of a committed default run, never typed by hand."""
    from reference_models.common.probe import render_run_table

    report = json.loads((DOCS / "custom_probe" / "probe.json").read_text(encoding="utf-8"))
    assert _probe_run_block(DOCS / "custom-architecture.md") == render_run_table(report, kind="custom")
    assert (DOCS / "custom_probe" / "probe_grid.png").is_file()
