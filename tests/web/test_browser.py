"""The web view in a real browser (headless Chromium through Selenium): a phrase found in a real
whisper-base transcript plays from its hit and is read along; hostile names stay text; a day's
page follows a local `process-day` while its worker runs."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from streaming_pipeline.cli import main
from streaming_pipeline.tools.samples import clip_files, write_tar_xz

from ..conftest import DAY, SLOW_DECODING, query, worker_options
from .conftest import member_id, serve
from .test_server import HOSTILE, process_day


def wait(driver, condition, timeout: float = 60.0):
    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: condition(d))


def no_alert(driver) -> bool:
    try:
        _ = driver.switch_to.alert
    except NoAlertPresentException:
        return True
    return False


@pytest.mark.realmodel
@pytest.mark.slow
def test_a_found_phrase_plays_from_its_hit_and_is_read_along(
    tmp_path: Path, pg_dsn: str, whisper_base: Path, realspeech: Path, make_archive, browser, server_stops
) -> None:
    files = ["fw_jfk.flac", "sr_french.aiff", "ps_cards_001.wav"]
    make_archive([(f"speech/{n}", (realspeech / "audio" / n).read_bytes()) for n in files], "09_00.tar.xz")
    options = worker_options(tmp_path, pg_dsn, whisper_base)
    options[options.index("--beam-size") + 1] = "5"
    assert main(["process-day", DAY, "--executor", "local", "--input-root", str(tmp_path / "input"),
                 "--log-dir", str(tmp_path / "logs"), "--timestamps", "word", *options]) == 0  # fmt: skip
    server = serve(tmp_path, pg_dsn, str(tmp_path / "remote"))
    server_stops.append(server)

    browser.get(server.url + "/")
    box = browser.find_element(By.CSS_SELECTOR, "form.search input[name=q]")
    box.send_keys('"ask not what your country"', Keys.ENTER)
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "li.hit"))
    # Results say how many, grouped by member.
    counts = browser.find_element(By.ID, "counts").text
    assert re.fullmatch(r"\d+ segments? in 1 member, page 1 of 1", counts), counts
    group = browser.find_element(By.CSS_SELECTOR, "li.group")
    assert "fw_jfk.flac" in group.find_element(By.CSS_SELECTOR, "a.member").text
    hit = group.find_element(By.CSS_SELECTOR, "li.hit")
    assert hit.find_element(By.TAG_NAME, "mark").text.lower().startswith("ask")
    play = hit.find_element(By.CSS_SELECTOR, "a.play")
    at = float(play.get_attribute("data-at"))
    assert at > 1.0
    play.click()

    # Where the page put the audio element once its metadata was in (read before it played on,
    # so a loaded machine cannot move it), and where it is now.
    begun = wait(browser, lambda d: d.execute_script("return document.body.dataset.begunAt"))
    assert abs(float(begun) - at) <= 1.0, (begun, at)
    now = browser.execute_script("return document.getElementById('player').currentTime")
    assert now >= float(begun) - 0.05 and browser.find_element(By.ID, "press-play").get_attribute("hidden")
    # While it plays, the highlighted word moves forward.
    browser.execute_script("document.getElementById('player').play()")
    seen: list[float] = []
    deadline = time.monotonic() + 30
    while len(set(seen)) < 3 and time.monotonic() < deadline:
        word = browser.execute_script("return document.body.dataset.word")
        if word:
            seen.append(float(word))
        time.sleep(0.1)
    assert len(set(seen)) >= 3 and seen == sorted(seen), seen
    highlighted = browser.find_elements(By.CSS_SELECTOR, ".w.now")
    assert (len(highlighted) == 1 and float(highlighted[0].get_attribute("data-start")) == seen[-1]) or seen
    # A click on a word seeks there.
    first = browser.find_elements(By.CSS_SELECTOR, ".w")[0]
    first.click()
    wait(
        browser, lambda d: d.execute_script("return document.getElementById('player').currentTime") < at - 1.5
    )
    # The hit's segment is marked, chosen, its query words highlighted; n goes round the hits.
    chosen = browser.find_element(By.CSS_SELECTOR, ".seg.hit.chosen")
    marks = [m.text.lower().strip(",.") for m in chosen.find_elements(By.TAG_NAME, "mark")]
    assert "ask" in marks and "country" in marks, marks  # the search's words (its stop words are not)
    hits = browser.find_elements(By.CSS_SELECTOR, ".seg.hit")
    browser.find_element(By.TAG_NAME, "body").send_keys("n")
    assert browser.execute_script("return document.body.dataset.hit") == str(1 % len(hits))
    browser.find_element(By.ID, "prev-hit").click()
    assert browser.execute_script("return document.body.dataset.hit") == "0"
    top = browser.execute_script(
        "return arguments[0].getBoundingClientRect().top / window.innerHeight", chosen
    )
    assert 0.0 <= top <= 1.0  # on the screen
    # A link at this moment: the page's own address, starting at the second being played.
    browser.execute_script("const a = document.getElementById('player'); a.pause(); a.currentTime = 3.4")
    wait(browser, lambda d: d.execute_script("return document.getElementById('player').seeking") is False)
    browser.find_element(By.ID, "copy-link").click()
    link = wait(browser, lambda d: d.execute_script("return document.body.dataset.copied"))
    assert link.endswith("?t=3") and "/member/" in link, link
    browser.get(link)
    begun = wait(browser, lambda d: d.execute_script("return document.body.dataset.begunAt"))
    assert abs(float(begun) - 3.0) < 0.1
    # Keys: space plays, the right arrow seeks 5 s on.
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_RIGHT)
    wait(browser, lambda d: d.execute_script("return document.getElementById('player').currentTime") >= 7.9)
    browser.find_element(By.TAG_NAME, "body").send_keys(" ")
    wait(browser, lambda d: d.execute_script("return !document.getElementById('player').paused"))
    # No asset was refused (the policy's violations and failed loads are logged as SEVERE).
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []


@pytest.mark.slow
def test_hostile_names_render_as_text(tmp_path: Path, pg_dsn: str, tiny_model: Path, clips, browser,
                                      server_stops) -> None:  # fmt: skip
    remote = process_day(tmp_path, pg_dsn, tiny_model, clips)
    # The random model cannot be made to say markup: one segment's text is set to it here.
    hostile_text = '<script>alert(4)</script> "quoted" & <b onmouseover=alert(5)>bold</b>'
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            "UPDATE segments SET text = %s, words = NULL WHERE member = %s", (hostile_text, HOSTILE[0])
        )
    server = serve(tmp_path, pg_dsn, str(remote))
    server_stops.append(server)

    for name in HOSTILE:
        browser.get(f"{server.url}/member/{member_id(pg_dsn, name)}")
        assert browser.find_element(By.CSS_SELECTOR, "h1.member-name").text == name
        assert no_alert(browser)
    browser.get(f"{server.url}/member/{member_id(pg_dsn, HOSTILE[0])}")
    assert browser.find_element(By.CSS_SELECTOR, ".seg").text.endswith(hostile_text)
    browser.get(f"{server.url}/search?q=alert")
    snippet = browser.find_element(By.CSS_SELECTOR, "li.hit .snippet")
    assert "alert" in snippet.find_element(By.TAG_NAME, "mark").text and "<script>" in snippet.text
    assert HOSTILE[0] in browser.find_element(By.CSS_SELECTOR, "li.group a.member").text
    for page in ("/", f"/days/{DAY}", "/search?q=%3Cscript%3Ealert(6)%3C%2Fscript%3E"):
        browser.get(server.url + page)
        time.sleep(0.5)
        assert no_alert(browser), page
    assert browser.find_element(By.CSS_SELECTOR, "form.search input[name=q]").get_attribute("value") == (
        "<script>alert(6)</script>"
    )


@pytest.mark.slow
def test_the_day_page_follows_a_local_run(tmp_path: Path, pg_dsn: str, tiny_model: Path, browser,
                                          server_stops) -> None:  # fmt: skip
    write_tar_xz(tmp_path / "input" / DAY / "10_00.tar.xz", list(clip_files(4, seed=3)))
    assert main(["init-db", "--dsn", pg_dsn]) == 0
    server = serve(tmp_path, pg_dsn, str(tmp_path / "remote"))
    server_stops.append(server)
    run = subprocess.Popen(
        [sys.executable, "-m", "streaming_pipeline", "process-day", DAY, "--executor", "local",
         "--input-root", str(tmp_path / "input"), "--log-dir", str(tmp_path / "logs"),
         *worker_options(tmp_path, pg_dsn, tiny_model), *SLOW_DECODING],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        # The worker is held still (SIGSTOP) once it runs, so the page is seen while it does.
        deadline = time.monotonic() + 120
        while not (rows := query(pg_dsn, "SELECT pid FROM archives WHERE state = 'running'")):
            assert time.monotonic() < deadline and run.poll() is None
            time.sleep(0.05)
        worker = int(rows[0]["pid"])
        os.kill(worker, signal.SIGSTOP)
        browser.get(f"{server.url}/days/{DAY}")
        browser.execute_script("window.sameDocument = true")
        state = browser.find_element(By.CSS_SELECTOR, "#archives tbody td.state")
        assert state.text == "running"
        wait(browser, lambda d: int(d.execute_script("return document.body.dataset.polls")) >= 1)
        os.kill(worker, signal.SIGCONT)
        wait(browser, lambda d: d.execute_script("return document.body.dataset.complete") == "true", 240)
        assert browser.find_element(By.CSS_SELECTOR, "#archives tbody td.state").text == "done"
        assert browser.find_element(By.CSS_SELECTOR, "#archives tbody td.c3").text == "4"
        assert browser.execute_script("return window.sameDocument") is True  # updated, not reloaded
        # Final: the page says so and asks no more (two poll intervals and more pass unasked).
        assert browser.execute_script("return document.body.dataset.settled") == "true"
        assert "no longer updates" in browser.find_element(By.ID, "following").text
        polls = int(browser.execute_script("return document.body.dataset.polls"))
        time.sleep(4.5)
        assert int(browser.execute_script("return document.body.dataset.polls")) == polls
        assert run.wait(timeout=240) == 0
        # Browsing without a search: the day's slot -> its members -> a member's page.
        browser.find_element(By.CSS_SELECTOR, "#archives tbody td.c0 a").click()
        wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#members tbody tr"))
        names = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#members td.name a")]
        assert len(names) == 4 and names == sorted(names), names
        assert browser.find_element(By.ID, "count").text == "4 members"
        browser.find_element(By.CSS_SELECTOR, "#members th a[href*=duration]").click()
        wait(browser, lambda d: "sort=duration" in d.current_url)
        browser.find_element(By.CSS_SELECTOR, "#members td.name a").click()
        wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "h1.member-name"))
        assert browser.find_element(By.CSS_SELECTOR, "h1.member-name").text in names
        # ... and it plays (space, as a listener starts it from the keyboard).
        wait(browser, lambda d: d.execute_script("return document.getElementById('player').readyState") >= 1)
        browser.find_element(By.TAG_NAME, "body").send_keys(" ")
        wait(
            browser, lambda d: d.execute_script("return document.getElementById('player').currentTime") > 0.2
        )
    finally:
        if run.poll() is None:
            run.kill()


AXE = (
    Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    / "streaming-pipeline/npm/node_modules/axe-core/axe.min.js"
)


def axe_violations(driver) -> list[str]:
    """axe-core's serious and critical violations on the page (the npm package that
    scripts/install-deps.sh puts in the cache), as 'rule: target' lines."""
    if not AXE.is_file():
        pytest.fail(f"axe-core is not at {AXE}: run scripts/install-deps.sh")
    driver.execute_script(AXE.read_text(encoding="utf-8"))
    result = driver.execute_async_script(
        "const done = arguments[0]; axe.run().then(done, (e) => done({error: String(e)}))"
    )
    assert "error" not in result, result
    return [
        f"{v['id']} ({v['impact']}): {', '.join(str(n['target']) for n in v['nodes'][:3])}"
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]


@pytest.mark.slow
def test_every_page_fits_a_phone_and_passes_axe(tmp_path: Path, pg_dsn: str, tiny_model: Path, clips, browser,
                                               server_stops) -> None:  # fmt: skip
    """390 px wide (a phone) and 1280: no page scrolls sideways, and axe-core finds nothing
    serious or critical on any page type (the days, a day, a slot, a member, a search, an error,
    the day's report)."""
    remote = process_day(tmp_path, pg_dsn, tiny_model, clips)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("UPDATE segments SET text = 'the printed bible of mainz' WHERE seq = 0")
    server = serve(tmp_path, pg_dsn, str(remote))
    server_stops.append(server)
    mid = member_id(pg_dsn, clips[2][0])
    member = f"/member/{mid}"
    pages = ["/", f"/days/{DAY}", f"/days/{DAY}/slots/09_00", member, f"{member}?q=bible&t=abc",
             "/search?q=bible", "/search?q=the", "/member/999999"]  # fmt: skip
    wrong: list[str] = []
    for width in (390, 1280):
        browser.set_window_size(width, 900)
        for page in pages:
            browser.get(server.url + page)
            wide = browser.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
            if wide[0] > wide[1]:
                wrong.append(f"{width} px {page}: scrolls sideways ({wide[0]} > {wide[1]})")
            if width == 390:
                wrong += [f"{page}: {v}" for v in axe_violations(browser)]
    # The day report: a document to read on a desktop (its tables are wide), checked by axe too.
    browser.set_window_size(1280, 900)
    browser.get(f"{server.url}/days/{DAY}/report")
    wrong += [f"report: {v}" for v in axe_violations(browser)]
    assert not wrong, "\n".join(wrong)


def _long_clip(clip: bytes, seconds: float) -> bytes:
    """`clip` (espeak speech) said over and over for `seconds`, as 16 kHz FLAC."""
    import io

    import numpy as np
    import soundfile as sf

    audio, rate = sf.read(io.BytesIO(clip), dtype="float32", always_2d=True)
    one = audio.mean(axis=1)
    out = io.BytesIO()
    sf.write(
        out, np.tile(one, int(seconds * rate / len(one)) + 1)[: int(seconds * rate)], rate, format="FLAC"
    )
    return out.getvalue()


def _begun(browser) -> float:
    return float(wait(browser, lambda d: d.execute_script("return document.body.dataset.begunAt")))


@pytest.mark.slow
def test_a_moment_in_a_long_member_is_opened_cited_and_never_under_the_player(
    tmp_path: Path, pg_dsn: str, tiny_model: Path, clips, browser, server_stops
) -> None:
    """`?t=1:30` and `?t=1m30s` start a 100 s member at 90 s; "copy link" there gives `?t=90`;
    at a phone's width and a desktop's, the player sticks below the header and a segment
    scrolled into view stops below the two."""
    long_name = "long/hundred_seconds.flac"
    write_tar_xz(
        tmp_path / "input" / DAY / "10_00.tar.xz", [(long_name, _long_clip(clips[0][1], 100.0)), clips[2]]
    )
    options = worker_options(tmp_path, pg_dsn, tiny_model)
    assert main(["process-day", DAY, "--executor", "local", "--input-root", str(tmp_path / "input"),
                 "--log-dir", str(tmp_path / "logs"), *options]) == 0  # fmt: skip
    server = serve(tmp_path, pg_dsn, str(tmp_path / "remote"))
    server_stops.append(server)
    page = f"{server.url}/member/{member_id(pg_dsn, long_name)}"
    for t in ("1:30", "1m30s", "90"):
        browser.get(f"{page}?t={t}")
        assert abs(_begun(browser) - 90.0) < 0.1, t
        assert not browser.find_elements(By.ID, "t-note"), f"t={t} was read"
    browser.find_element(By.ID, "copy-link").click()
    link = wait(browser, lambda d: d.execute_script("return document.body.dataset.copied"))
    assert link == f"{page}?t=90", link

    short = f"{server.url}/member/{member_id(pg_dsn, clips[2][0])}"
    for width in (390, 1280):
        browser.set_window_size(width, 700)
        browser.get(short)
        _begun(browser)
        # A transcript longer than the screen (a spacer after it), scrolled past its first
        # segment, which is then brought into view as following the playing text does.
        where = browser.execute_script(
            """const spacer = document.createElement("div"); spacer.style.height = "3000px";
            document.body.appendChild(spacer); window.scrollTo(0, 2000);
            const seg = document.querySelector(".seg"); seg.scrollIntoView({block: "nearest"});
            const box = (el) => el.getBoundingClientRect();
            return [box(document.querySelector("header")).bottom, box(document.getElementById("player")).top,
                    box(document.getElementById("player")).bottom, box(seg).top, window.scrollY];"""
        )
        header_bottom, player_top, player_bottom, seg_top, scrolled = where
        assert player_top >= max(header_bottom, 0) - 1, f"{width} px: the player under the header {where}"
        assert player_top <= max(header_bottom, 0) + 1, f"{width} px: a gap above the player {where}"
        assert seg_top >= player_bottom - 1, f"{width} px: the segment under the player {where}"
        assert scrolled > 0, where
