"""The report in a real headless Chromium: loaded from file://, its cells against the manifest,
videos playing in sync, axes switched through the page, the A/B wipe, the live-video cap over a
1,000-cell page, and ratings through the served page. Screenshots go to the test's artifacts
folder (``COMFYSWEEP_TEST_ARTIFACTS`` when set)."""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import uvicorn
from click.testing import CliRunner

from orchestrator.cli import cli
from orchestrator.emulator.server import bind
from orchestrator.locate import locate
from orchestrator.report.page import VIDEO_CAP
from orchestrator.report.serve import create_app
from orchestrator.store import Store

from .reportdata import sample_videos, synthetic_sweep
from .test_report import grid_spec, manifest, run_grid
from .waiting import PATIENCE

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(shutil.which("chromedriver") is None, reason="needs chromedriver"),
    pytest.mark.timeout(300),
]

FRAME = 1 / 16  # the emulator's videos are 16 fps


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--autoplay-policy=no-user-gesture-required",
        "--allow-file-access-from-files",
        "--window-size=1280,900",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(
        service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=options
    )
    driver.set_script_timeout(PATIENCE)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = os.environ.get("COMFYSWEEP_TEST_ARTIFACTS")
    folder = Path(where) if where else tmp_path_factory.mktemp("artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def shot(driver: Any, artifacts: Path, name: str) -> Path:
    path = artifacts / f"{name}.png"
    assert driver.save_screenshot(str(path))
    print(f"screenshot: {path}")
    return path


def until(driver: Any, script: str, what: str) -> Any:
    """Wait for a JS expression to be truthy (the event itself, never a fixed time)."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, PATIENCE, poll_frequency=0.05).until(
        lambda d: d.execute_script(f"return ({script});"), what
    )


SAMPLE = """
var vs = Array.from(document.querySelectorAll(arguments[0]));
if (vs.length < arguments[1]) return null;
var ready = vs.every(function (v) { return !v.paused && !v.seeking && v.readyState >= 3; });
if (!ready) return null; // not started yet, or waiting on a seek or on data: no verdict
var ts = vs.map(function (v) { return v.currentTime; }); // one script, one moment: no skew
var dur = Math.min.apply(null, vs.map(function (v) { return v.duration; }));
var worst = 0;
ts.forEach(function (a) { ts.forEach(function (b) {
  var d = Math.abs(a - b) % dur; worst = Math.max(worst, Math.min(d, dur - d)); }); });
return {worst: worst, times: ts, master: window.comfysweepReport.masterTime()};
"""

IN_STEP = 6  # consecutive samples within two frames


def assert_in_sync(driver: Any, selector: str, count: int) -> None:
    """The ``count`` videos play within two frames of each other for IN_STEP samples in a row
    (each at a new master time, every video's time read in one script).

    A sample while a video has not started, seeks or waits for data gives no verdict, and one
    out of step starts the count again: a loaded machine stalls a decoder now and then, and the
    page must bring it back. Only a page that never holds them together fails, at the deadline.
    """
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    seen: list[dict[str, Any]] = []
    run = [0]

    def in_step(d: Any) -> bool:
        sample = d.execute_script(SAMPLE, selector, count)
        if sample is None or (seen and sample["master"] == seen[-1]["master"]):
            return False
        seen.append(sample)
        run[0] = run[0] + 1 if sample["worst"] <= 2 * FRAME else 0
        return run[0] >= IN_STEP

    try:
        WebDriverWait(driver, PATIENCE, poll_frequency=0.05).until(in_step)
    except TimeoutException:
        raise AssertionError(f"{selector}: never {IN_STEP} samples in sync: {seen[-8:]}") from None


def knock_out_of_step(driver: Any, selector: str) -> None:
    """Put one playing video a third of its length away, as a long stall would."""
    driver.execute_script(
        "var v = document.querySelector(arguments[0]);"
        "v.currentTime = (v.currentTime + v.duration / 3) % v.duration;",
        selector,
    )


def test_the_page_shows_the_sweep_plays_in_sync_switches_axes_and_wipes(
    tmp_path: Path, browser: Any, artifacts: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    spec = grid_spec(tmp_path, prompt="a fox </script><img src=x onerror=window.pwned=1>")
    run_grid(spec)
    folder = tmp_path / "results" / "grid"
    result = CliRunner().invoke(cli, ["report", str(spec)])
    assert result.exit_code == 0, result.output
    page = (folder / "report.html").as_uri()

    # Everything on one page (no Z: seed is a filter, left at "all", so cells stack two jobs).
    browser.get(page + "#x=cfg&y=steps&z=")
    until(browser, "document.querySelectorAll('.tile').length === 8", "8 tiles")
    assert browser.execute_script("return window.pwned") is None
    tiles = browser.execute_script(
        "return Array.from(document.querySelectorAll('.tile')).map(function (t) { return {"
        " key: t.dataset.key, state: t.dataset.state, inputs: JSON.parse(t.dataset.inputs),"
        " file: (t.querySelector('a.file') || {}).getAttribute ?"
        "   t.querySelector('a.file').getAttribute('href') : null }; })"
    )
    entries = {e["key"]: e for e in manifest(folder)}
    assert {t["key"] for t in tiles} == set(entries)
    for t in tiles:
        entry = entries[t["key"]]
        assert t["state"] == entry["state"] == "done"
        assert t["file"] == quote(entry["outputs"][0]["path"])
        for name in ("seed", "steps", "cfg", "prompt"):
            want = entry["inputs"][name]
            assert t["inputs"][name] == (want if isinstance(want, str) else json.dumps(want))
    assert len(browser.find_elements(By.CSS_SELECTOR, "td.cell.stack .tile")) == 8
    shot(browser, artifacts, "report-stacked")

    # The default view: X/Y/Z from the data, Z as tabs; play all in sync.
    browser.get(page)
    browser.refresh()
    until(browser, "document.querySelectorAll('.tile').length === 4", "one tab of 4 tiles")
    assert browser.execute_script("return location.hash").startswith("#x=cfg&y=steps&z=seed")
    shot(browser, artifacts, "report-posters")

    # Hovering a cell plays it alone.
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(browser).move_to_element(browser.find_element(By.CSS_SELECTOR, ".tile")).perform()
    until(
        browser,
        "(function () { var v = document.querySelector('.tile video');"
        " return v && !v.paused && v.currentTime > 0.1; })()",
        "the hovered cell plays",
    )
    ActionChains(browser).move_to_element(browser.find_element(By.ID, "title")).perform()
    until(browser, "document.querySelector('.tile video').paused", "it stops when left")
    browser.find_element(By.ID, "play").click()
    assert_in_sync(browser, "#grid video", 4)
    knock_out_of_step(browser, "#grid video")
    assert_in_sync(browser, "#grid video", 4)  # the page brought it back
    shot(browser, artifacts, "report-grid")
    sources = browser.execute_script(
        "return Array.from(document.querySelectorAll('#grid video')).map(function (v) {"
        " var t = v.closest('.tile'); return [t.dataset.key, v.getAttribute('src')]; })"
    )
    assert len(sources) == 4
    for key, src in sources:
        assert src == quote(entries[key]["outputs"][0]["path"])

    # The summary: jobs by state, spend, a histogram of durations.
    browser.find_element(By.ID, "summary-toggle").click()
    until(browser, "!document.getElementById('summary').hidden", "the summary")
    counts = browser.execute_script(
        "return Array.from(document.querySelectorAll('#summary tr')).map(function (r) {"
        " return [r.dataset.state, r.querySelector('.n').textContent]; })"
    )
    assert counts == [["done", "8"]]
    assert browser.find_element(By.CSS_SELECTOR, "#summary .spent").text.startswith("spent $")
    assert browser.find_elements(By.CSS_SELECTOR, "#summary svg.histogram rect")
    browser.find_element(By.ID, "summary-toggle").click()

    # Without loop, every video stops at the end, together.
    browser.find_element(By.ID, "loop").click()
    until(browser, "document.body.dataset.playing === 'false'", "the end stops playback")
    assert browser.execute_script(
        "return Array.from(document.querySelectorAll('#grid video')).every(function (v) {"
        " return v.paused; })"
    )
    browser.find_element(By.ID, "loop").click()
    browser.find_element(By.ID, "play").click()
    assert_in_sync(browser, "#grid video", 4)

    # Switch axes through the page: the grid's headers follow, and the URL keeps the view.
    before = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "th.xlabel")]
    Select(browser.find_element(By.ID, "axis-x")).select_by_value("seed")
    until(browser, "location.hash.indexOf('x=seed') >= 0", "the hash names the new X")
    after = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "th.xlabel")]
    assert before == ["3.0", "5.0"]
    assert after == ["1", "2"]
    # the old X took the place of the new one (cfg is now Z): still 4 tiles a tab
    assert browser.execute_script("return location.hash").startswith("#x=seed&y=steps&z=cfg")
    browser.find_elements(By.CSS_SELECTOR, ".tab")[1].click()
    until(browser, "location.hash.indexOf('tab=5.0') >= 0", "the second tab")
    assert len(browser.find_elements(By.CSS_SELECTOR, ".tile")) == 4

    # A/B: pick two cells, open the wipe; both play, in sync with each other.
    picks = browser.find_elements(By.CSS_SELECTOR, ".tile .abpick")
    picks[0].click()
    picks[3].click()
    browser.find_element(By.ID, "ab-open").click()
    until(browser, "!document.getElementById('ab').hidden", "the A/B view")
    browser.execute_script(
        "var s = document.getElementById('ab-slider'); s.value = 30;"
        "s.dispatchEvent(new Event('input'));"
    )
    clip = browser.execute_script("return document.getElementById('ab-a').style.clipPath")
    assert clip == "inset(0px 70% 0px 0px)"
    assert_in_sync(browser, "#ab video", 2)
    knock_out_of_step(browser, "#ab-b")
    assert_in_sync(browser, "#ab video", 2)
    shot(browser, artifacts, "report-ab")

    # A link reopens the same view.
    link = browser.current_url
    assert "abv=1" in link
    browser.get("about:blank")
    browser.get(link)
    until(browser, "!document.getElementById('ab').hidden", "the A/B view again")
    assert Select(browser.find_element(By.ID, "axis-x")).first_selected_option.text.startswith(
        "seed"
    )
    assert browser.find_element(By.CSS_SELECTOR, ".tab[aria-selected=true]").text == "cfg = 5.0"


def test_a_1000_cell_page_never_holds_more_than_the_cap_of_videos(
    tmp_path: Path, browser: Any, artifacts: Path
) -> None:
    folder = tmp_path / "big"
    videos = sample_videos(tmp_path / "samples", 4)
    synthetic_sweep(folder, {"seed": list(range(40)), "steps": list(range(25))}, videos)
    result = CliRunner().invoke(cli, ["report", "--store", str(folder / "comfysweep.db")])
    assert result.exit_code == 0, result.output
    browser.get((folder / "report.html").as_uri())
    until(browser, "document.querySelectorAll('.tile').length === 1000", "1,000 tiles")
    until(browser, "window.comfysweepReport.liveCount() > 0", "videos in view")
    browser.find_element("id", "play").click()
    height = browser.execute_script("return document.documentElement.scrollHeight")
    width = browser.execute_script("return document.documentElement.scrollWidth")
    for y in range(0, height, 700):
        for x in (0, width // 2, width):
            browser.execute_script("window.scrollTo(arguments[0], arguments[1])", x, y)
            # the observer answered: the live videos are the tiles in view now
            until(
                browser,
                "(function () { var vs = document.querySelectorAll('#grid video');"
                " if (!vs.length) return false;"
                " var r = vs[0].getBoundingClientRect();"
                " return r.bottom > -150 && r.top < innerHeight + 150; })()",
                "a video in view",
            )
            live = browser.execute_script("return window.comfysweepReport.liveCount()")
            assert 0 < live <= VIDEO_CAP
    assert browser.execute_script("return window.comfysweepReport.stats.maxLive") <= VIDEO_CAP
    shot(browser, artifacts, "report-1000")


def test_the_served_page_rates_cells_into_the_store(
    tmp_path: Path, browser: Any, artifacts: Path
) -> None:
    from selenium.webdriver.common.by import By

    spec = grid_spec(tmp_path)
    run_grid(spec)
    folder = tmp_path / "results" / "grid"
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(locate(spec, None)), log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        browser.get(f"http://127.0.0.1:{port}/")
        until(browser, "document.querySelectorAll('.tile .rate').length === 12", "rate buttons")
        until(browser, "window.comfysweepReport.liveCount() === 4", "videos served")
        tiles = browser.find_elements(By.CSS_SELECTOR, ".tile")
        first, second = (t.get_attribute("data-key") for t in tiles[:2])
        tiles[0].find_element(By.CSS_SELECTOR, ".rate-up").click()
        until(browser, f"document.body.dataset.rated === '{first}:up'", "the first rating")
        tiles[1].find_element(By.CSS_SELECTOR, ".rate-pick").click()
        until(browser, f"document.body.dataset.rated === '{second}:pick'", "the pick")
        shot(browser, artifacts, "report-served")
        with Store.open(folder / "comfysweep.db", readonly=True) as db:
            assert db.ratings() == {first: "up", second: "pick"}
        browser.refresh()
        until(
            browser,
            f"document.querySelector('.tile[data-key=\"{second}\"] .rate-pick')"
            ".getAttribute('aria-pressed') === 'true'",
            "the pick after a reload",
        )
    finally:
        server.should_exit = True
        thread.join(PATIENCE)
        sock.close()


SLOW_SEEKS = """
// Every seek takes 0.6 s (a slow machine's decoder): the element reports seeking, and a new
// seek meanwhile restarts it, as a browser does.
var proto = HTMLMediaElement.prototype;
var time = Object.getOwnPropertyDescriptor(proto, "currentTime");
var seeking = Object.getOwnPropertyDescriptor(proto, "seeking");
window.slowSeeks = {restarted: 0, landed: 0};
Object.defineProperty(proto, "currentTime", {configurable: true,
  get: function () { return this._slow ? this._slowTo : time.get.call(this); },
  set: function (t) {
    var v = this;
    if (v._slow) { clearTimeout(v._slow); window.slowSeeks.restarted++; }
    v._slowTo = t;
    v._slow = setTimeout(function () {
      v._slow = null; time.set.call(v, t); window.slowSeeks.landed++; }, 600);
  }});
Object.defineProperty(proto, "seeking", {configurable: true,
  get: function () { return !!this._slow || seeking.get.call(this); }});
"""


def test_a_seek_slower_than_the_drift_allows_still_lands_in_step(
    tmp_path: Path, browser: Any
) -> None:
    folder = tmp_path / "slow"
    videos = sample_videos(tmp_path / "samples", 2, frames=81)  # 5 s: longer than a few seeks
    synthetic_sweep(folder, {"seed": [1, 2]}, videos)
    assert (
        CliRunner().invoke(cli, ["report", "--store", str(folder / "comfysweep.db")]).exit_code == 0
    )
    browser.get((folder / "report.html").as_uri())
    until(browser, "window.comfysweepReport.liveCount() === 2", "two videos")
    browser.execute_script(SLOW_SEEKS)
    browser.find_element("id", "play").click()
    assert_in_sync(browser, "#grid video", 2)
    knock_out_of_step(browser, "#grid video")
    until(browser, "window.slowSeeks.landed >= 2", "the page's own seek landed")
    assert_in_sync(browser, "#grid video", 2)


def test_long_labels_leave_the_grid_in_view(tmp_path: Path, browser: Any) -> None:
    import sqlite3
    from contextlib import closing

    folder = tmp_path / "long"
    jobs = synthetic_sweep(
        folder, {"seed": [1, 2], "steps": [4, 8]}, sample_videos(tmp_path / "samples", 1)
    )
    prompts = ["a fox " * 60 + "END", "\u202eW" + "W" * 400]  # prompts on Y, one unbroken
    with closing(sqlite3.connect(folder / "comfysweep.db")) as raw, raw:
        for job in jobs:
            inputs = job.inputs | {"56_text": prompts[job.index % 2]}
            raw.execute("UPDATE jobs SET inputs = ? WHERE key = ?", (json.dumps(inputs), job.key))
    store = str(folder / "comfysweep.db")
    result = CliRunner().invoke(cli, ["report", "--store", store, "--y", "prompt", "--z", "seed"])
    assert result.exit_code == 0, result.output
    browser.get((folder / "report.html").as_uri() + "#x=steps&y=prompt&z=&f.seed=")
    until(browser, "document.querySelectorAll('.tile').length === 4", "4 tiles")
    sizes = browser.execute_script(
        "var r = function (s) { return Array.from(document.querySelectorAll(s)).map("
        " function (e) { return e.getBoundingClientRect().width; }); };"
        "return {y: r('th.ylabel'), tile: document.querySelector('.tile').getBoundingClientRect()"
        ".left, filter: r('#filters select'), width: innerWidth,"
        " titles: Array.from(document.querySelectorAll('th.ylabel')).map("
        "  function (e) { return e.title; })};"
    )
    assert max(sizes["y"]) <= 320, sizes
    assert sizes["tile"] < sizes["width"] / 2, sizes
    assert sorted(sizes["titles"]) == sorted(prompts)  # the whole text on hover
    browser.get((folder / "report.html").as_uri() + "#x=steps&y=seed&z=prompt")
    until(browser, "document.querySelectorAll('.tab').length === 2", "2 tabs")
    tabs = browser.execute_script(
        "return Array.from(document.querySelectorAll('.tab')).map(function (e) {"
        " return [e.getBoundingClientRect().width, e.title]; })"
    )
    assert all(width <= 400 for width, _ in tabs), tabs
    assert sorted(title for _, title in tabs) == sorted(f"prompt = {p}" for p in prompts)


def test_a_stale_link_s_filter_value_shows_all_rather_than_nothing(
    tmp_path: Path, browser: Any
) -> None:
    folder = tmp_path / "stale"
    synthetic_sweep(
        folder, {"seed": [1, 2], "steps": [4, 8], "cfg": [3, 5]}, sample_videos(tmp_path / "s", 1)
    )
    assert (
        CliRunner().invoke(cli, ["report", "--store", str(folder / "comfysweep.db")]).exit_code == 0
    )
    # a link made before the sweep changed: seed 9 is no longer there
    browser.get((folder / "report.html").as_uri() + "#x=steps&y=cfg&z=&f.seed=9")
    until(browser, "document.querySelectorAll('.tile').length === 8", "every tile (seed: all)")
    assert browser.execute_script("return document.querySelector('#filters select').value") == ""
    assert "f.seed" not in browser.execute_script("return location.hash")


def test_an_orphaned_job_is_marked_as_no_longer_in_the_spec(tmp_path: Path, browser: Any) -> None:
    import sqlite3
    from contextlib import closing

    folder = tmp_path / "orphans"
    jobs = synthetic_sweep(folder, {"seed": [1, 2]}, sample_videos(tmp_path / "s", 1))
    with closing(sqlite3.connect(folder / "comfysweep.db")) as raw, raw:
        raw.execute("UPDATE jobs SET in_spec = 0 WHERE key = ?", (jobs[0].key,))
    assert (
        CliRunner().invoke(cli, ["report", "--store", str(folder / "comfysweep.db")]).exit_code == 0
    )
    browser.get((folder / "report.html").as_uri())
    until(browser, "document.querySelectorAll('.tile').length === 2", "2 tiles")
    marked = browser.execute_script(
        "return Array.from(document.querySelectorAll('.tile')).map(function (t) {"
        " return [t.dataset.key, !!t.querySelector('.orphaned'), t.title]; })"
    )
    for key, badge, title in marked:
        orphan = key == jobs[0].key
        assert badge == orphan
        assert ("orphaned: no longer in the spec" in title) == orphan, title


def test_a_link_picking_a_cell_without_video_for_a_b_opens_no_wipe(
    tmp_path: Path, browser: Any
) -> None:
    import sqlite3
    from contextlib import closing

    folder = tmp_path / "ab"
    jobs = synthetic_sweep(folder, {"seed": [1, 2, 3]}, sample_videos(tmp_path / "s", 1))
    with closing(sqlite3.connect(folder / "comfysweep.db")) as raw, raw:
        raw.execute(
            "UPDATE jobs SET state = 'failed', outputs = '[]' WHERE key = ?", (jobs[0].key,)
        )
    assert (
        CliRunner().invoke(cli, ["report", "--store", str(folder / "comfysweep.db")]).exit_code == 0
    )
    # a link made when the first job still had its video
    link = f"#x=seed&y=&z=&ab={jobs[0].key},{jobs[1].key}&abv=1"
    browser.get((folder / "report.html").as_uri() + link)
    until(browser, "document.querySelectorAll('.tile').length === 3", "3 tiles")
    assert browser.execute_script("return document.getElementById('ab').hidden")
    assert (
        browser.execute_script("return document.getElementById('ab-a').getAttribute('src')") is None
    )
    assert browser.execute_script("return window.comfysweepReport.view.ab") == [jobs[1].key]
