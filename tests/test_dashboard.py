"""The Adaptive page in the scheduler's dashboard.

Over HTTP: served while the plugin runs (started with the scheduler or added
to a running one, with or without ``http_prefix``), listed in the "More..."
menu and in ``/individual-plots.json``, and gone once the plugin stops. In a
real browser: Debian's chromium, driven headless by selenium through Debian's
chromium-driver (nothing downloaded), shows the pool and the decisions after a
scale-up; the screenshot is the one in ``docs/observability.md``.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import require_live
from distributed import Client, Scheduler
from distributed.utils_test import gen_test, inc, slowinc
from helpers import until
from inprocess import InProcessBackend
from tornado.httpclient import AsyncHTTPClient

from dask_adaptive_plugin import AdaptivePlugin, dashboard

pytest.importorskip("bokeh")

#: The screenshot in the docs; a test run refreshes it only when asked
#: (DASK_ADAPTIVE_SCREENSHOT=1), so that running the tests changes no file.
DOCS_SCREENSHOT = Path(__file__).parent.parent / "docs" / "img" / "dashboard-adaptive.png"
MENU_LINK = '<a href="adaptive">Adaptive</a>'


async def fetch(url: str, method: str = "GET") -> tuple[int, str]:
    """The status and body of one request (errors are answers too)."""
    body = b"" if method in ("POST", "PUT", "PATCH") else None
    response = await AsyncHTTPClient().fetch(
        url, method=method, body=body, raise_error=False, allow_nonstandard_methods=True
    )
    return response.code, (response.body or b"").decode(errors="replace")


def base_url(s: Scheduler, prefix: str = "") -> str:
    return f"http://127.0.0.1:{s.http_server.port}{prefix}"


async def status(url: str) -> int:
    return (await fetch(url))[0]


async def assert_listed(base: str) -> None:
    """The page is served, in the "More..." menu and in /individual-plots.json."""
    code, body = await fetch(base + "/adaptive")
    assert code == 200 and "Bokeh" in body
    assert await status(base + "/individual-adaptive") == 200
    code, body = await fetch(base + "/status")
    assert code == 200 and body.count(MENU_LINK) == 1
    code, body = await fetch(base + "/individual-plots.json")
    plots = json.loads(body)
    assert plots["Individual Adaptive"] == "/individual-adaptive"
    # distributed's own pages are still listed
    assert plots["Individual Task Stream"] == "/individual-task-stream"


async def assert_gone(base: str) -> None:
    """After the plugin stopped: 404, and listed nowhere; distributed's pages stay."""
    await until(lambda: _is(status(base + "/adaptive"), 404), what="/adaptive gone")
    assert await status(base + "/individual-adaptive") == 404
    code, body = await fetch(base + "/status")
    assert code == 200 and MENU_LINK not in body
    plots = json.loads((await fetch(base + "/individual-plots.json"))[1])
    assert "Individual Adaptive" not in plots
    assert plots["Individual Task Stream"] == "/individual-task-stream"


async def _is(value: Any, expected: Any) -> bool:
    return await value == expected


# -- over HTTP ------------------------------------------------------------------------------


@gen_test(timeout=60, clean_kwargs={"threads": False})
async def test_the_page_is_served_while_the_plugin_runs():
    plugin = AdaptivePlugin(backend=InProcessBackend, maximum=1)
    async with Scheduler(
        host="127.0.0.1", dashboard_address="127.0.0.1:0", plugins=[plugin]
    ) as s:
        base = base_url(s)
        await assert_listed(base)
        async with Client(s.address, asynchronous=True) as c:
            assert await c.submit(inc, 1) == 2
        s.remove_plugin("adaptive")  # the plugin notices and stops
        await assert_gone(base)


@gen_test(timeout=60, clean_kwargs={"threads": False})
async def test_the_page_when_added_to_a_running_scheduler_with_a_prefix():
    async with Scheduler(
        host="127.0.0.1", dashboard_address="127.0.0.1:0", http_prefix="/dask"
    ) as s:
        base = base_url(s, "/dask")
        assert await status(base + "/adaptive") == 404
        plugin = AdaptivePlugin(backend=InProcessBackend, maximum=1)
        s.add_plugin(plugin)  # starts itself on the running scheduler
        await until(lambda: _is(status(base + "/adaptive"), 200), what="the page")
        await assert_listed(base)
        await plugin.stop()
        await assert_gone(base)


@gen_test(timeout=60, clean_kwargs={"threads": False})
async def test_a_replacing_plugin_shows_one_page():
    first = AdaptivePlugin(backend=InProcessBackend, maximum=1)
    async with Scheduler(
        host="127.0.0.1", dashboard_address="127.0.0.1:0", plugins=[first]
    ) as s:
        second = AdaptivePlugin(backend=InProcessBackend, maximum=2)
        with pytest.warns(UserWarning, match="plugin with name adaptive; overwriting"):
            s.add_plugin(second)
        await until(lambda: dashboard.page_of(second), what="the new page")
        await assert_listed(base_url(s))  # one menu entry
        # add_plugin replaced the first without telling it: it stops within 1 s
        await until(lambda: first.controller is None, what="the first to stop")
        assert dashboard.page_of(first) is None
        await assert_listed(base_url(s))  # the menu entry stays for the second
        assert dashboard.pages_on(s) == [dashboard.page_of(second)]


@gen_test(timeout=60, clean_kwargs={"threads": False})
async def test_without_a_dashboard_nothing_is_added():
    plugin = AdaptivePlugin(backend=InProcessBackend, maximum=1)
    async with Scheduler(host="127.0.0.1", dashboard=False, plugins=[plugin]) as s:
        assert plugin.controller is not None
        assert dashboard.page_of(plugin) is None
        async with Client(s.address, asynchronous=True) as c:
            assert await c.submit(inc, 1) == 2


@gen_test(timeout=60, clean_kwargs={"threads": False})
async def test_the_page_has_nothing_the_browser_can_change():
    """Read-only: no input, button or tool; no Python callback on any model
    (what the page's websocket could reach); a table that cannot be edited."""
    from bokeh.document import Document
    from bokeh.models import Tool
    from bokeh.models.widgets import AbstractButton, DataTable, InputWidget

    plugin = AdaptivePlugin(pools={"cpu": {"backend": InProcessBackend, "maximum": 1}})
    async with Scheduler(
        host="127.0.0.1", dashboard_address="127.0.0.1:0", plugins=[plugin]
    ) as s:
        page = dashboard.page_of(plugin)
        assert page is not None
        doc = Document()
        page.full_doc(s, {}, doc)
        models = list(doc.models)
        assert doc.get_model_by_name("adaptive-pool-cpu") in models
        for model in models:
            assert not isinstance(model, (InputWidget, AbstractButton, Tool)), model
            assert not model._callbacks and not model._event_callbacks, model
            assert not model.js_property_callbacks and not model.js_event_callbacks
        [table] = [m for m in models if isinstance(m, DataTable)]
        assert not (table.editable or table.selectable or table.sortable)
        # the only callback: the server's own timer that reads the plugin
        assert len(doc.session_callbacks) == 1


def test_without_bokeh_nothing_fails():
    script = textwrap.dedent(
        """
        import asyncio, sys, warnings
        warnings.simplefilter("ignore")  # distributed says it has no dashboard
        sys.modules["bokeh"] = None  # as if it were not installed
        from distributed import Scheduler
        from dask_adaptive_plugin import AdaptivePlugin, dashboard

        async def main():
            plugin = AdaptivePlugin(backend="local", maximum=1)
            async with Scheduler(
                host="127.0.0.1", dashboard_address="127.0.0.1:0", plugins=[plugin]
            ):
                assert plugin.controller is not None
                assert dashboard.page_of(plugin) is None
            print("ok")

        asyncio.run(main())
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.stdout.strip() == "ok", proc.stderr


# -- in a real browser ---------------------------------------------------------------------

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")

#: querySelectorAll through open shadow roots: Bokeh 3 renders each model
#: (the table, the text, the plots) in a shadow DOM.
DEEP = """
function deepAll(selector, root) {
  root = root || document;
  let found = Array.from(root.querySelectorAll(selector));
  for (const el of root.querySelectorAll('*'))
    if (el.shadowRoot) found = found.concat(deepAll(selector, el.shadowRoot));
  return found;
}
"""
DIVS = DEEP + "return deepAll('div').map(d => d.innerText || '');"
ROWS = DEEP + "return deepAll('.slick-row').map(r => r.innerText);"
SUMMARY = (
    DEEP
    + """
const div = deepAll('div').filter(d => (d.innerText || '').includes('waiting tasks'));
return div.length ? div[div.length - 1].innerText : '';
"""
)
#: The last n values of the cpu pool's running workers that the plot has.
LAST_RUNNING = """
const source = Bokeh.documents[0].get_model_by_name('adaptive-source-cpu');
return Array.from(source.get_column('running')).slice(-arguments[0]);
"""
CANVASES = (
    DEEP + "return deepAll('canvas').filter(c => c.width > 0 && c.height > 0).length;"
)


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Debian's chromium, headless, through Debian's chromium-driver."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.common import selenium_manager
    except ImportError:
        webdriver = None
    require_live(
        "chromium",
        bool(CHROMIUM and CHROMEDRIVER and webdriver),
        "needs Debian's chromium and chromium-driver and selenium (the test extra)",
    )
    # Selenium Manager (which downloads drivers and browsers) must not run
    monkeypatch.setenv("SE_OFFLINE", "true")
    monkeypatch.setattr(
        selenium_manager.SeleniumManager, "binary_paths", _no_selenium_manager
    )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",  # as root, in a container
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--no-first-run",
        "--window-size=1400,900",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(flag)
    service = Service(
        executable_path=CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log")
    )
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _no_selenium_manager(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("Selenium Manager was called: it may download things")


def wait_in_browser(driver: Any, condition: Any, what: str, timeout: float = 30) -> Any:
    """Poll ``condition(driver)`` in the browser until it is true (blocking)."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(
        condition, message=f"not shown in {timeout}s: {what}"
    )


def rows_with(driver: Any, *words: str) -> list[str]:
    return [r for r in driver.execute_script(ROWS) if all(w in r for w in words)]


def save_png(png: bytes, path: Path) -> None:
    """Replace ``path`` at once: runs on several Pythons may write it together."""
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_bytes(png)
    os.replace(partial, path)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.mark.browser
@pytest.mark.timeout(180)
@gen_test(timeout=150, clean_kwargs={"threads": False})
async def test_the_page_in_a_browser_after_a_scale_up(browser, tmp_path):
    import asyncio

    pools = {"cpu": {"backend": InProcessBackend, "maximum": 3, "idle_timeout": "1s"}}
    plugin = AdaptivePlugin(pools=pools, target_duration="1s")
    async with (
        Scheduler(
            host="127.0.0.1", dashboard_address="127.0.0.1:0", plugins=[plugin]
        ) as s,
        Client(s.address, asynchronous=True) as c,
    ):
        first = c.map(slowinc, range(6), delay=0.3)
        await until(lambda: s.workers, what="the scale-up")

        def in_browser(fn: Any, *args: Any) -> Any:  # selenium blocks: not on the loop
            return asyncio.to_thread(fn, *args)

        await in_browser(browser.get, base_url(s) + "/adaptive")
        await in_browser(
            wait_in_browser,
            browser,
            lambda d: rows_with(d, "cpu", "up"),
            "an up decision",
        )
        summary = await in_browser(browser.execute_script, SUMMARY)
        assert "cpu:" in summary and "running" in summary and "waiting tasks" in summary
        menu = await in_browser(
            browser.execute_script,
            "return Array.from(document.querySelectorAll('.dropdown-content a'))"
            ".map(a => [a.textContent, a.getAttribute('href')]);",
        )
        assert ["Adaptive", "adaptive"] in menu

        # more work while the page is open, then none: the plots show a full cycle
        second = c.map(slowinc, range(10, 22), delay=0.4)
        await c.gather(first + second)
        del first, second  # no data left to keep a worker for
        await in_browser(
            wait_in_browser,
            browser,
            lambda d: rows_with(d, "cpu", "down"),
            "a down decision",
        )
        await in_browser(
            wait_in_browser,
            browser,
            lambda d: (
                "cpu: 0 running" in d.execute_script(SUMMARY)
                and d.execute_script(LAST_RUNNING, 4) == [0, 0, 0, 0]
            ),
            "no worker left running, in the plot too",
        )
        assert await in_browser(browser.execute_script, CANVASES) >= 2
        assert await in_browser(rows_with, browser, "cpu", "up")  # below newer rows
        screenshot = tmp_path / "dashboard-adaptive.png"
        if os.environ.get("DASK_ADAPTIVE_SCREENSHOT") == "1":
            screenshot = DOCS_SCREENSHOT
        save_png(await in_browser(browser.get_screenshot_as_png), screenshot)

        await plugin.stop()  # the open page says so; a new one is not there
        await in_browser(
            wait_in_browser,
            browser,
            lambda d: "plugin has stopped" in "".join(d.execute_script(DIVS)),
            "the page saying that the plugin stopped",
        )
        await in_browser(browser.get, base_url(s) + "/adaptive")
        assert "404" in await in_browser(lambda: browser.title)
    width, height = png_size(screenshot)
    assert width >= 1000 and height >= 700
