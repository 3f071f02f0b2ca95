"""The README stays a short front page whose first code block sets up the project, and no
relative link in README.md or docs/*.md points at a file that does not exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MAX_README_LINES = 200

# [text](target) or [text](target "title"); images ![alt](target) too. Targets in <...> allowed.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~)")


def markdown_pages() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def without_code(text: str) -> str:
    """The text with fenced code blocks and inline code removed: links inside code are not links."""
    kept, in_fence = [], False
    for line in text.splitlines():
        if FENCE.match(line.lstrip()):
            in_fence = not in_fence
            continue
        if not in_fence:
            kept.append(re.sub(r"`[^`]*`", "", line))
    return "\n".join(kept)


def relative_links(text: str) -> list[str]:
    """Link targets that name a file in this checkout: no URL scheme, no mail, no bare #anchor."""
    targets = []
    for target in LINK.findall(without_code(text)):
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith("#"):
            continue  # http(s)://, mailto:, ... or an anchor in the same page
        targets.append(target.split("#", 1)[0].split("?", 1)[0])
    return targets


def broken_links(page: Path) -> list[str]:
    return [t for t in relative_links(page.read_text(encoding="utf-8")) if not (page.parent / t).exists()]


def first_code_block(text: str) -> str:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if FENCE.match(line))
    end = next(i for i in range(start + 1, len(lines)) if FENCE.match(lines[i]))
    return "\n".join(lines[start + 1 : end])


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; move detail into docs/"


def test_readme_first_code_block_sets_up_demo_and_tests():
    block = first_code_block(README.read_text(encoding="utf-8"))
    assert "asr demo" in block
    assert "python -m pytest -q" in block
    assert block.count("pip install torch==2.13.0") == 2


def test_docs_pages_exist():
    assert (ROOT / "docs").is_dir()
    assert len(markdown_pages()) > 1


@pytest.mark.parametrize("page", markdown_pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_files(page):
    assert broken_links(page) == []


def test_link_check_finds_a_broken_link(tmp_path):
    (tmp_path / "there.md").write_text("# there\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](there.md#a-section) [web](https://example.com/x.md) [anchor](#here) "
        "`[code](gone.md)`\n```\n[fenced](gone.md)\n```\n[broken](missing.md#x) ![img](pics/none.png)\n"
    )
    assert broken_links(page) == ["missing.md", "pics/none.png"]


def test_first_code_block_is_the_first_fence():
    text = "# t\n\nprose\n\n```bash\nfirst\n```\n\n```\nsecond\n```\n"
    assert first_code_block(text) == "first"
