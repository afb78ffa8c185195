"""README shows every screenshot in docs/screenshots/, each one is taken by a browser test (so a
run of those tests refreshes them all), and each is a real PNG of a page."""

from __future__ import annotations

import re
import struct
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "docs" / "screenshots"
BROWSER_TESTS = REPO / "tests" / "portal" / "browser"


def _readme_links() -> set[str]:
    readme = (REPO / "README.md").read_text()
    return set(re.findall(r"\]\(docs/screenshots/([\w.-]+\.png)\)", readme))


def _taken_by_tests() -> set[str]:
    code = "".join(p.read_text() for p in BROWSER_TESTS.glob("test_*.py"))
    return {f"{name}.png" for name in re.findall(r"\.shot\(\"([\w-]+)\"\)", code)}


def test_readme_shows_every_screenshot_and_only_existing_ones() -> None:
    on_disk = {p.name for p in SCREENSHOTS.glob("*.png")}
    assert on_disk, "no screenshot in docs/screenshots/: run the browser tests"
    links = _readme_links()
    assert on_disk - links == set(), f"screenshots the README does not show: {on_disk - links}"
    assert links - on_disk == set(), f"README links to missing screenshots: {links - on_disk}"


def test_every_screenshot_is_taken_by_a_browser_test() -> None:
    on_disk = {p.name for p in SCREENSHOTS.glob("*.png")}
    taken = _taken_by_tests()
    assert on_disk - taken == set(), f"stale screenshots no test refreshes: {on_disk - taken}"
    assert taken - on_disk == set(), (
        f"screenshots taken by tests but not committed: {taken - on_disk}"
    )


def test_screenshots_are_real_page_captures() -> None:
    for path in SCREENSHOTS.glob("*.png"):
        head = path.read_bytes()[:24]
        assert head[:8] == b"\x89PNG\r\n\x1a\n", path.name
        width, height = struct.unpack(">II", head[16:24])
        assert width in {390, 1280} and height >= 600, (path.name, width, height)
