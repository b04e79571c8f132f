"""Headless Chromium for the HTML report's tests: the system's browser (Debian's ``chromium``) via Playwright.

No browser is downloaded: Playwright drives the executable ``.ci/run`` installs with apt-get. Every
request that is not for the page's own file is refused and recorded, so a page that reaches for the
network fails its test instead of silently working online.

Usage::

    with open_page(path) as seen:
        seen.page.wait_for_selector("body[data-charts=done]")
        assert not seen.errors and not seen.outside
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHROMIUM_FLAGS = (
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
)  # fmt: skip


def chromium_path() -> str | None:
    """The system Chromium (``ENGINE_CHROMIUM`` overrides), or None. Usage: ``chromium_path()``"""
    named = os.environ.get("ENGINE_CHROMIUM")
    if named:
        return named if Path(named).is_file() else None
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    return None


def why_no_browser() -> str | None:
    """None when a browser test can run, else why not (said by the skip). Usage: ``pytest.skip(why)``"""
    try:
        import playwright.sync_api  # noqa: F401  # only to know it is there
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[dev]')"
    if chromium_path() is None:
        return "no Chromium on PATH: .ci/run installs Debian's chromium with apt-get (needs root); none here"
    return None


@dataclass
class Seen:
    """A page and what it did: console errors and page errors, and requests it tried beyond its file."""

    page: Any
    errors: list[str] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)


@contextmanager
def open_page(path: Path, *, javascript: bool = True, width: int = 1100, height: int = 1400) -> Iterator[Seen]:
    """Open ``path`` in headless Chromium with a fresh profile; yields a :class:`Seen`."""
    from playwright.sync_api import sync_playwright  # a dev dependency; imported only where a browser runs

    executable = chromium_path()
    assert executable is not None, why_no_browser()
    with sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
        context = pw.chromium.launch_persistent_context(
            profile, executable_path=executable, headless=True, args=list(CHROMIUM_FLAGS),
            java_script_enabled=javascript, viewport={"width": width, "height": height},
        )  # fmt: skip
        try:
            page = context.new_page()
            seen = Seen(page=page)
            page.on("console", lambda m: seen.errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: seen.errors.append(str(e)))

            def guard(route: Any) -> None:
                url = route.request.url
                if url.startswith("file://") or url.startswith("data:") or url.startswith("blob:"):
                    route.continue_()
                else:
                    seen.outside.append(url)
                    route.abort()

            page.route("**/*", guard)
            page.goto(path.resolve().as_uri())
            yield seen
        finally:
            context.close()
