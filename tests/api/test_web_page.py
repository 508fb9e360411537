"""The web page at ``/`` used as an operator would: headless Chromium against a real ``vidmem serve``.

Everything runs inside a network namespace whose only interface is loopback, so a page or docs asset
fetched from a CDN would fail to load, and Chromium records every request besides. The driver is
this module run as a program; it prints one JSON line that the tests read:
    unshare -n sh -c 'ip link set lo up; exec python -m tests.api.test_web_page --workdir DIR'
It makes a key with ``vidmem keys create``, opens ``/``, enters the key, registers a looping H.264
clip, asks a question and waits for the answer to arrive without a reload, finds it in the history
by search and exports it, adds an alert that fires on any answer and waits for its event, draws
the memory timeline, repeats the page at phone size (390x844), and renders ``/docs``.
Screenshots go to ``DIR/screenshots`` (the path is printed by the tests).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.cdp import DESKTOP, PHONE, Browser
from tests.conftest import write_h264
from tests.ingest.peers import run_browser_driver

REPO = Path(__file__).resolve().parents[2]
QUESTION = "Is the zebra crossing the road?"
HOSTILE_NAME = '<img src=x onerror="window.hacked=1">'
pytestmark = [pytest.mark.slow, pytest.mark.timeout(360)]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(fetch, done, timeout: float = 120.0):  # type: ignore[no-untyped-def]
    deadline, value = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            value = fetch()
            if done(value):
                return value
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"timed out; last value {value!r}")


def js_str(value: str) -> str:
    return json.dumps(value)


class Run:
    """One driver run: the server, the browser, the key and what was seen."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.shots = workdir / "screenshots"
        self.shots.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "VIDMEM_DATA_DIR": str(workdir / "data"), "VIDMEM_API_PORT": str(self.port),
                    "VIDMEM_MODEL": "tiny-random", "VIDMEM_FRAME_SIZE": "64", "VIDMEM_MAX_NEW_TOKENS": "4",
                    "VIDMEM_FILE_DIR": str(workdir), "VIDMEM_CHUNK_SECONDS": "1", "VIDMEM_SAMPLE_FPS": "2"}
        self.result: dict[str, Any] = {"screenshots": str(self.shots)}
        self.key = ""  # made by `vidmem keys create` before the server starts

    def vidmem(self, *args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "vidmem", *args], env=self.env, capture_output=True,
                              text=True, timeout=120, cwd=REPO)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, headers={"Authorization": f"Bearer {self.key}"}, timeout=10)

    def shot(self, browser: Browser, name: str, full_page: bool = True) -> None:
        browser.js("window.scrollTo(0, 0)")
        browser.screenshot(self.shots / f"{name}.png", full_page=full_page)

    # steps -----------------------------------------------------------------------------------------

    def enter_key(self, browser: Browser) -> None:
        browser.goto(f"{self.base}/")
        self.result["key_prompt"] = browser.wait_for(
            "!document.querySelector('#key-panel').hidden && document.querySelector('#key-reason').textContent")
        browser.type("#key-input", self.key)
        browser.click("#key-form button[type=submit]")
        browser.wait_for("document.body.dataset.ready === '1' && document.querySelector('#key-panel').hidden")
        self.result["key_stored"] = browser.js(f"localStorage.getItem('vidmem.apiKey') === {js_str(self.key)}")

    def register(self, browser: Browser, clip: Path) -> str:
        browser.type("#source", str(clip))
        browser.type("#stream-name", "front door")
        browser.click("#loop")
        browser.click("#register-form button[type=submit]")
        stream_id = browser.wait_for("document.body.dataset.selected")
        with self.http() as api:  # the question needs video in memory first
            wait_until(lambda: api.get(f"/streams/{stream_id}").json(), lambda s: (s.get("memory_tokens") or 0) > 0)
        selector = f"#streams li[data-id={js_str(stream_id)}]"
        self.result["stream"] = browser.wait_for(
            f"(() => {{ const li = document.querySelector({js_str(selector)});"
            " const img = li && li.querySelector('img.thumb');"
            " return img && img.naturalWidth > 0 && {status: li.dataset.status,"
            " name: li.querySelector('.stream-name').textContent, frame: [img.naturalWidth, img.naturalHeight]}; })()",
            timeout=60)
        return stream_id

    def ask(self, browser: Browser) -> dict[str, Any]:
        browser.js("window.sameDocument = true")  # gone if the page reloads
        # every status the page shows, in order: a poll from here may come after a quick answer has replaced the first
        browser.js("window.shownStatuses = []; new MutationObserver(() => {"
                   " const li = document.querySelector('#answers li.question'); const shown = window.shownStatuses;"
                   " if (li && shown[shown.length - 1] !== li.dataset.status) shown.push(li.dataset.status); })"
                   ".observe(document.querySelector('#answers'),"
                   " {subtree: true, childList: true, attributes: true, attributeFilter: ['data-status']}); true")
        browser.type("#ask-text", QUESTION)
        browser.click("#ask-form button[type=submit]")
        answer = browser.wait_for(
            "(() => { const li = document.querySelector('#answers li.question');"
            " return ['done', 'failed'].includes(li.dataset.status) && {id: li.dataset.id, status: li.dataset.status,"
            " answer: li.querySelector('.a').textContent, via: li.dataset.via || null,"
            " question: li.querySelector('.q').textContent}; })()", timeout=120)
        answer["first_status"] = browser.js("window.shownStatuses[0] || null")
        answer["statuses"] = browser.js("window.shownStatuses")
        answer["same_document"] = browser.js("window.sameDocument === true")
        self.shot(browser, "desktop-ask")
        return answer

    def history(self, browser: Browser, question_id: str) -> dict[str, Any]:
        browser.click("[role=tab][data-tab=history]")
        item = f"#history li.question[data-id={js_str(question_id)}]"
        found: dict[str, Any] = {}
        browser.type("#history-q", "no-such-word-anywhere")
        browser.click("#history-form button[type=submit]")
        found["miss"] = browser.wait_for("(() => { const text = document.querySelector('#history-count').textContent;"
                                         " return text === 'no questions match' && text; })()")
        browser.type("#history-q", "zebra")
        browser.click("#history-form button[type=submit]")
        found["hit"] = browser.wait_for(
            f"(() => {{ const li = document.querySelector({js_str(item)});"
            " return li && {text: li.querySelector('.q').textContent, answer: li.querySelector('.a').textContent,"
            " shown: document.querySelectorAll('#history li.question').length}; })()")
        browser.click("#export-csv")
        found["csv"] = browser.wait_for(
            "(async () => { const a = document.querySelector('#export-links a[data-format=csv]');"
            " return a && {name: a.download, text: await (await fetch(a.href)).text()}; })()")
        self.shot(browser, "desktop-history")
        return found

    def alert(self, browser: Browser, stream_id: str) -> dict[str, Any]:
        browser.click("[role=tab][data-tab=alerts]")
        browser.type("#alert-question", "Is anything moving?")
        browser.type("#alert-fire-on", "yes, no")  # fires whatever the model answers: deterministic
        browser.click("#alert-form button[type=submit]")
        created = browser.wait_for("document.querySelector('#alerts li.alert')?.dataset.id")
        event = browser.wait_for(
            "(() => { const li = document.querySelector('#alert-events li.event');"
            " const img = li?.querySelector('img');"
            " return li && img && img.naturalWidth > 0 && {id: li.dataset.id, fired_by: li.dataset.alert,"
            " text: li.textContent, thumb: [img.naturalWidth, img.naturalHeight]}; })()", timeout=120)
        self.shot(browser, "desktop-alerts")
        return {"alert": created, **event}

    def memory(self, browser: Browser) -> dict[str, Any]:
        browser.click("[role=tab][data-tab=memory]")
        plot = browser.wait_for(
            "(() => { const svg = document.querySelector('#memory-plot svg.plot');"
            " const bars = svg ? svg.querySelectorAll('rect.bar').length : 0;"
            " return bars > 0 && {bars, line: !!svg.querySelector('path.line'),"
            " facts: document.querySelector('#memory-facts').textContent}; })()", timeout=60)
        self.shot(browser, "desktop-memory")
        return plot

    def phone(self, browser: Browser, stream_id: str) -> dict[str, Any]:
        browser.viewport(PHONE)
        browser.goto(f"{self.base}/")  # the key is remembered: no prompt this time
        browser.wait_for("document.body.dataset.ready === '1'")
        browser.click(f"#streams li[data-id={js_str(stream_id)}] button")
        browser.wait_for("!document.querySelector('#detail').hidden")
        browser.click("[role=tab][data-tab=alerts]")
        browser.wait_for("document.querySelector('#alert-events li.event img')?.naturalWidth > 0", timeout=60)
        widths = browser.js("({page: document.documentElement.scrollWidth, view: window.innerWidth,"
                            " prompt: !document.querySelector('#key-panel').hidden,"
                            " wide: [...document.querySelectorAll('body *')].filter(e =>"
                            " e.getBoundingClientRect().right > window.innerWidth + 1).map(e => e.tagName + '#' + e.id"
                            " + '.' + e.className).slice(0, 5)})")
        self.shot(browser, "phone-alerts")
        browser.click("[role=tab][data-tab=ask]")
        browser.js("document.querySelector('#detail').scrollIntoView()")
        browser.screenshot(self.shots / "phone-ask.png")
        browser.viewport(DESKTOP)
        return widths

    def hostile_name(self, browser: Browser, clip: Path) -> dict[str, Any]:
        with self.http() as api:
            response = api.post("/streams", json={"source": str(clip), "name": HOSTILE_NAME})
            assert response.status_code == 201, response.text
            stream_id = response.json()["id"]
        browser.goto(f"{self.base}/")
        shown = browser.wait_for(
            f"document.querySelector('#streams li[data-id=\"{stream_id}\"] .stream-name')?.textContent", timeout=30)
        return {"shown": shown, "hacked": browser.js("window.hacked === 1"),
                "img_x": browser.js("document.querySelectorAll('img[src=\"x\"]').length")}

    def docs(self, browser: Browser) -> dict[str, Any]:
        with self.http() as api:
            spec = api.get("/openapi.json").raise_for_status().json()
        operations = sum(1 for item in spec["paths"].values() for method in item
                         if method in {"get", "post", "put", "patch", "delete"})
        browser.goto(f"{self.base}/docs")
        rendered = browser.wait_for(f"document.querySelectorAll('.opblock').length >= {operations} &&"
                                    " document.querySelectorAll('.opblock').length", timeout=60)
        title = browser.js("document.querySelector('.info .title')?.textContent || ''")
        browser.screenshot(self.shots / "docs.png")
        return {"operations": operations, "opblocks": rendered, "title": title}


def drive(workdir: Path) -> dict[str, Any]:
    """Every step in order; a step that fails records its error (and a screenshot) and the run goes on
    with the steps that do not need it, so that each test reports its own part."""
    run = Run(workdir)
    run.key = run.vidmem("keys", "create", "--tenant", "web", "--name", "browser").strip().splitlines()[-1]
    clip = write_h264(workdir / "clip.mp4", seconds=4.0)
    log = (workdir / "serve.log").open("wb")
    server = subprocess.Popen([sys.executable, "-m", "vidmem", "serve"], env=run.env, stdout=log, stderr=log, cwd=REPO)
    browser, begun = None, time.monotonic()

    def step(name: str, action, *args):  # type: ignore[no-untyped-def]
        started = time.monotonic()
        try:
            run.result[name] = action(browser, *args)
        except Exception as exc:  # reported by the test that reads this step
            run.result[name] = {"error": f"{type(exc).__name__}: {exc}"}
            browser.screenshot(run.shots / f"failed-{name}.png")
            browser.viewport(DESKTOP)
        run.result["seconds"][name] = round(time.monotonic() - started, 1)
        return run.result[name]

    try:
        wait_until(lambda: httpx.get(f"{run.base}/health").status_code, lambda code: code == 200, timeout=90)
        run.result["seconds"] = {"server": round(time.monotonic() - begun, 1)}
        browser = Browser(workdir / "profile", workdir / "chromium.log")
        browser.viewport(DESKTOP)
        run.enter_key(browser)  # the steps after these two need them: a failure here ends the run
        stream_id = run.register(browser, clip)
        run.result["seconds"]["key and register"] = round(time.monotonic() - begun, 1)
        answer = step("answer", run.ask)
        if "id" in answer:
            step("history", run.history, answer["id"])
        step("alert", run.alert, stream_id)
        step("memory", run.memory)
        step("phone", run.phone, stream_id)
        step("hostile", run.hostile_name, clip)
        step("docs", run.docs)
        run.result["requests"] = sorted(set(browser.requested_urls()))
        run.result["problems"] = browser.problems()
    finally:
        if browser is not None:
            browser.close()
        server.send_signal(signal.SIGTERM)
        server.wait(60)
        log.close()
    run.result["base"] = run.base
    return run.result


def part(web_run: dict[str, Any], name: str) -> dict[str, Any]:
    """One step's result; its error, if it failed, is the assertion message."""
    value = web_run.get(name)
    assert value is not None, f"step {name!r} did not run: an earlier one failed ({web_run.get('answer')})"
    assert "error" not in value, f"step {name!r} failed: {value['error']} (screenshots: {web_run['screenshots']})"
    return value


@pytest.fixture(scope="session")
def web_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The driver's result, run once inside a loopback-only network namespace."""
    workdir = tmp_path_factory.mktemp("web")
    done = run_browser_driver("tests.api.test_web_page", workdir, timeout=330)
    logs = {name: (workdir / name).read_text()[-2000:] for name in ("serve.log", "chromium.log")
            if (workdir / name).exists()}
    assert done.returncode == 0, (done.stderr[-4000:], logs)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"\nweb page screenshots: {result['screenshots']}")
    return result


def test_page_when_no_key_is_stored_asks_for_one_and_keeps_it(web_run):
    assert "needs an API key" in web_run["key_prompt"]
    assert web_run["key_stored"] is True


def test_page_when_a_stream_is_registered_lists_it_with_its_latest_frame(web_run):
    stream = web_run["stream"]
    assert stream["name"] == "front door" and stream["status"] == "live", stream
    assert stream["frame"][0] > 0 and stream["frame"][1] > 0


def test_page_when_a_question_is_asked_shows_the_answer_arriving_without_a_reload(web_run):
    answer = part(web_run, "answer")
    assert answer["question"] == QUESTION
    assert answer["status"] == "done" and answer["answer"].strip() and answer["answer"] != "…", answer
    assert answer["first_status"] in ("queued", "running"), answer  # it was shown before it was answered
    assert answer["same_document"] is True
    assert answer["via"] == "sse", answer  # delivered by the server-sent event stream, not by polling


def test_page_history_when_searched_finds_the_question_and_exports_it(web_run):
    history = part(web_run, "history")
    assert history["miss"] == "no questions match", history
    assert history["hit"]["text"] == QUESTION and history["hit"]["shown"] == 1, history
    assert history["hit"]["answer"] == web_run["answer"]["answer"]
    assert history["csv"]["name"].endswith(".csv") and QUESTION in history["csv"]["text"], history["csv"]


def test_page_alerts_when_an_alert_fires_show_its_event_with_a_thumbnail(web_run):
    alert = part(web_run, "alert")
    assert alert["alert"] and alert["fired_by"] == alert["alert"], alert  # the alert made through the page
    assert alert["thumb"][0] > 0 and alert["thumb"][1] > 0, alert
    assert "Is anything moving?" in alert["text"], alert


def test_page_memory_tab_when_opened_plots_the_timeline(web_run):
    memory = part(web_run, "memory")
    assert memory["bars"] >= 1 and memory["line"], memory
    assert "tokens" in memory["facts"]


def test_page_on_a_phone_sized_screen_fits_its_width(web_run):
    phone = part(web_run, "phone")
    assert phone["view"] == 390 and phone["page"] <= 390, phone
    assert phone["wide"] == [], phone
    assert phone["prompt"] is False  # the key stayed in localStorage


def test_page_when_a_name_holds_markup_shows_it_as_text(web_run):
    hostile = part(web_run, "hostile")
    assert hostile == {"shown": HOSTILE_NAME, "hacked": False, "img_x": 0}, hostile


def test_page_and_docs_when_rendered_offline_fetch_only_from_the_server(web_run):
    base = web_run["base"]
    outside = [url for url in web_run["requests"] if not url.startswith((f"{base}/", "blob:", "data:"))]
    assert outside == [], outside
    # and nothing broke: no uncaught exception, no refused asset, no CSP violation
    expected = ("status of 401 (Unauthorized)", "status of 404 (Not Found)")  # before the key; before a frame
    problems = [p for p in web_run["problems"] if not (p.startswith("network:") and any(e in p for e in expected))]
    assert problems == [], problems


def test_docs_when_rendered_offline_show_every_operation(web_run):
    docs = part(web_run, "docs")
    assert docs["operations"] >= 10, docs
    assert docs["opblocks"] >= docs["operations"], docs
    assert docs["title"].startswith("vidmem"), docs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, required=True)
    args = parser.parse_args()
    print(json.dumps(drive(args.workdir)))


if __name__ == "__main__":
    main()
