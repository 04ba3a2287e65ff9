"""The HTML report: its data and summary, and the page itself driven in headless Chromium."""

from __future__ import annotations

import base64
import json
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from synthetic_run import write_run

from pipeline.cli import main
from pipeline.report import report_data, summary, window, write_report

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> str:
    return str(write_run(str(tmp_path_factory.mktemp("run") / "run"), n_features=120, shard_size=32).uri)


def test_report_data_and_summary(run):
    data = report_data(run)
    assert [f[0] for f in data["features"]] == list(range(120))
    s = summary(data["features"])
    assert (s["features"], s["labeled"], s["dead"], s["failed"]) == (120, 118, 1, 1)
    assert sum(s["hist"]) == 118 and 0.5 <= s["median"] <= 1.0
    tops, negatives = data["contexts"][7][:-1], data["contexts"][7][-1]
    assert len(tops) == 4 and len(negatives) == 2
    pieces, levels, act = tops[0]
    assert len(pieces.split("\ue000")) == len(levels) and "9" in levels and act == 2.0


def test_window_keeps_peak_and_marks_cuts():
    tokens = [f"w{i}" for i in range(40)]
    acts = [0.0] * 40
    acts[30] = 3.0
    pieces, levels = window(tokens, acts, peak=3.0)
    pieces = pieces.split("\ue000")
    assert pieces[0] == "…" and pieces[-1] == " …"
    assert pieces[levels.index("9")] == " w30"


def test_report_command_writes_self_contained_html(run, tmp_path, capsys):
    out = tmp_path / "report.html"
    assert main(["report", run, "-o", str(out)]) == 0
    page = out.read_text()
    assert "<svg" in page and 'id="search"' in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page), (
        "the report must not load anything from the network"
    )
    assert str(out) in capsys.readouterr().out


def test_report_of_missing_run_is_a_clear_error(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nothing"), "-o", str(tmp_path / "r.html")]) == 2
    assert "holds no run" in capsys.readouterr().err


class DevTools:
    """A minimal Chrome DevTools protocol client over one page's websocket."""

    def __init__(self, ws_url: str):
        import websocket

        self.ws = websocket.create_connection(ws_url, timeout=30)
        self.next_id = 0
        self.events: list[dict] = []

    def call(self, method: str, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]
            self.events.append(msg)

    def wait_for(self, method: str, timeout: float = 20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(e.get("method") == method for e in self.events):
                return
            self.events.append(json.loads(self.ws.recv()))
        raise TimeoutError(method)

    def js(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(result["exceptionDetails"])
        return result["result"].get("value")

    def errors(self) -> list[str]:
        out = []
        for e in self.events:
            p = e.get("params", {})
            if e.get("method") == "Runtime.exceptionThrown":
                out.append(json.dumps(p["exceptionDetails"]))
            elif e.get("method") == "Runtime.consoleAPICalled" and p.get("type") == "error":
                out.append(json.dumps(p["args"]))
            elif e.get("method") == "Log.entryAdded" and p["entry"]["level"] == "error":
                out.append(p["entry"]["text"])
        return out


@pytest.fixture
def chromium(tmp_path):
    """A headless Chromium with remote debugging on a free local port; the websocket URL of its page."""
    if not Path(CHROMIUM).exists():
        pytest.skip("no Chromium at /usr/bin/chromium (apt-get install -y chromium; make test installs it as root)")
    pytest.importorskip("websocket", reason="websocket-client is needed to drive Chromium (pip install -e '.[test]')")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--remote-debugging-port={port}",
            # Chromium refuses DevTools websockets from an origin it was not told to allow.
            f"--remote-allow-origins=http://127.0.0.1:{port}",
            "--window-size=1280,1000",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:
                    pages = [t for t in json.load(r) if t["type"] == "page"]
                if pages:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("Chromium did not open its debugging port")
            time.sleep(0.2)
        yield pages[0]["webSocketDebuggerUrl"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def search(page: DevTools, text: str) -> None:
    """Type `text` into the search box (set it and fire the input event, as typing does)."""
    page.js(
        f"{{ const s = document.getElementById('search'); s.value = {json.dumps(text)}; "
        "s.dispatchEvent(new Event('input')); }"
    )


def test_report_page_in_chromium(run, tmp_path, chromium):
    out = tmp_path / "report.html"
    write_report(run, str(out))
    page = DevTools(chromium)
    for domain in ("Page", "Runtime", "Log"):
        page.call(f"{domain}.enable")
    page.call("Page.navigate", url=out.as_uri())
    page.wait_for("Page.loadEventFired")
    deadline = time.monotonic() + 20
    while page.js("document.body.dataset.ready") != "1":  # the data inflates asynchronously
        assert time.monotonic() < deadline, "the report never finished loading its data"
        time.sleep(0.05)

    assert page.js("document.querySelectorAll('tr.row').length") == 50  # one page of rows, not all 120
    assert page.js("document.getElementById('count').textContent").endswith("of 120 features")

    # Typing in the search box filters the rows.
    search(page, "water57")
    assert page.js("[...document.querySelectorAll('tr.row')].map(r => r.cells[1].textContent)") == ["water57"]

    # Opening a card shows its contexts with the activating tokens shaded.
    page.js("document.querySelector('tr.row').click()")
    shaded = page.js(
        "[...document.querySelectorAll('.card .tok')].map(t => [t.textContent, getComputedStyle(t).backgroundColor])"
    )
    assert shaded and shaded[0][0] == "water" and shaded[0][1].startswith("rgba(230, 120, 20")
    assert page.js("document.querySelectorAll('.card .neg').length") == 2

    # A named feature says where its label came from and shows the namer's proposals, unverified ones set apart.
    search(page, "water9")
    assert page.js("document.querySelector('tr.row .source')") is None  # feature 9's label is the search's
    search(page, "kind8")
    page.js("document.querySelector('tr.row').click()")
    assert page.js("document.querySelector('tr.row .source').textContent") == " named"
    card = page.js("document.querySelector('.card').textContent")
    assert "label from the namer" in card and "namer's proposals" in card
    assert page.js("[...document.querySelectorAll('.card .unverified')].map(e => e.textContent)") == ["zebra 0.500"]

    # Sorting by score (descending first) puts the best feature on top.
    search(page, "")
    page.js("document.querySelector('th[data-k=\"2\"]').click()")
    scores = page.js("[...document.querySelectorAll('tr.row')].map(r => parseFloat(r.cells[2].textContent))")
    assert scores == sorted(scores, reverse=True)

    page.js("document.querySelector('th[data-k=\"2\"]').click(); document.querySelector('tr.row').click()")
    shot = base64.b64decode(page.call("Page.captureScreenshot", format="png")["data"])
    (tmp_path / "report.png").write_bytes(shot)
    assert shot.startswith(b"\x89PNG")
    assert page.errors() == []


def test_report_of_run_without_latents(tmp_path):
    """A run labeled from a user's examples table has no latents: density is simply missing."""
    store = write_run(str(tmp_path / "run"), n_features=12)
    for name in store.list("latents"):
        store.delete(f"latents/{name}")
    data = report_data(store.uri)
    assert len(data["features"]) == 12 and all(f[4] is None for f in data["features"])
