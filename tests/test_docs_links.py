"""Every relative link in README.md and docs/**/*.md resolves: the file (or folder) exists and, for
`file.md#anchor`, the anchor is a heading of that file. Links in code (fenced, indented or inline) are not
links and are skipped, as are http(s), mailto and other URLs.

Anchors follow GitHub's rule: the heading's text, lowercased, with every character that is not a letter, a
digit, `_`, `-` or a space removed, and spaces turned into hyphens; a repeated heading gets `-1`, `-2`, ...
"""
from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]

FENCED = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.M | re.S)
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
# [text](target) and ![alt](target); the text may hold one level of brackets (an image inside a link).
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=[\"']([^\"']+)[\"']", re.I)
URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, ...


def without_code(markdown: str) -> str:
    """The text with fenced blocks, indented code blocks and inline code blanked out (lines kept)."""
    text = FENCED.sub(lambda m: "\n" * m.group(0).count("\n"), markdown)
    lines, out, in_block, previous_blank = text.split("\n"), [], False, True
    for line in lines:
        indented = line.startswith(("    ", "\t")) and line.strip() != ""
        if indented and (in_block or previous_blank):
            in_block = True
            out.append("")
            continue
        if line.strip():
            in_block = False
        previous_blank = line.strip() == ""
        out.append(line)
    return INLINE_CODE.sub("", "\n".join(out))


def slug(heading: str) -> str:
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link or image in a heading: its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").replace("*", "")
    text = "".join(c for c in text.lower() if c.isalnum() or c in "_- ")
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = without_code(path.read_text(encoding="utf-8"))
    found, seen = set(), {}
    for line in text.split("\n"):
        m = HEADING.match(line)
        if m:
            base = slug(m.group(2))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    found.update(HTML_ANCHOR.findall(text))
    return found


def links(path: Path) -> list[str]:
    return [m.group(1).strip("<>") for m in LINK.finditer(without_code(path.read_text(encoding="utf-8")))]


def shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def broken_links(path: Path) -> list[str]:
    problems = []
    for target in links(path):
        if URL.match(target):
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / unquote(file_part)).resolve() if file_part else path
        if not resolved.exists():
            problems.append(f"{target}: {shown(resolved)} does not exist")
        elif anchor and resolved.suffix == ".md" and resolved.is_file() and unquote(anchor) not in anchors(resolved):
            problems.append(f"{target}: no heading with anchor #{anchor} in {shown(resolved)}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO)) for p in PAGES])
def test_every_relative_link_resolves(page):
    assert not broken_links(page), f"broken links in {shown(page)}:\n  " + "\n  ".join(broken_links(page))


def test_every_docs_page_is_in_the_readme_index():
    linked = {(REPO / t.partition("#")[0]).resolve() for t in links(REPO / "README.md") if not URL.match(t)}
    missing = [p.name for p in sorted((REPO / "docs").glob("*.md")) if p.resolve() not in linked]
    assert not missing, f"docs pages missing from README.md's index: {missing}"


def test_every_sanity_check_has_an_anchor_in_sanity_checks_md():
    """The checks' messages can link to docs/sanity-checks.md#<check name with hyphens>."""
    names = set()
    for source in (REPO / "isorobust").rglob("*.py"):
        names.update(re.findall(r"CheckResult\(\s*\"([a-z0-9_]+)\"", source.read_text(encoding="utf-8")))
    assert len(names) >= 9, names
    have = anchors(REPO / "docs" / "sanity-checks.md")
    missing = sorted(n for n in names if n.replace("_", "-") not in have)
    assert not missing, f"docs/sanity-checks.md has no heading for: {missing}"


@pytest.mark.parametrize("heading,expected", [
    ("PGD close to APGD", "pgd-close-to-apgd"),
    ("Gradient-free never beats gradient attacks", "gradient-free-never-beats-gradient-attacks"),
    ("`isorobust report`", "isorobust-report"),
    ("The MNIST study: [results/mnist.md](results/mnist.md)", "the-mnist-study-resultsmnistmd"),
    ("Settings (`check.*`)", "settings-check"),
    ("snake_case stays", "snake_case-stays"),
])
def test_slugs_follow_github(heading, expected):
    assert slug(heading) == expected


def test_a_planted_broken_link_is_found(tmp_path):
    (tmp_path / "there.md").write_text("# A heading\n\n## A heading\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](there.md#a-heading) [ok too](there.md#a-heading-1) [self](#title) ![img](there.md)\n"
                    "[missing](nowhere.md) [bad anchor](there.md#nope)\n"
                    "`[in code](code.md)`\n\n    [indented code](code.md)\n\n```\n[fenced](code.md)\n```\n"
                    "[web](https://example.org/x) [mail](mailto:a@b.c)\n\n# Title\n")
    assert broken_links(page) == [f"nowhere.md: {tmp_path / 'nowhere.md'} does not exist",
                                  f"there.md#nope: no heading with anchor #nope in {tmp_path / 'there.md'}"]
