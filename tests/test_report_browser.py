"""The HTML report in headless Chromium: it loads with no console errors and a screenshot shows tables and plots.

Chromium is driven over the DevTools protocol with a ~60-line standard-library WebSocket client (no dependency):
console errors are `Runtime.consoleAPICalled` (error/assert), `Runtime.exceptionThrown`, and `Log.entryAdded` at
level error (failed resource loads). A page with a deliberate error proves the detector catches them.

Skips only when no Chromium is installed and we are not in CI; with CI=true a missing browser fails the test
(`make test` installs Debian's chromium package when it is missing).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image, ImageStat

from mixtune.results import ResultsDB
from mixtune.study.report_cli import read_study, write_report

pytestmark = pytest.mark.slow  # end-to-end runs: `pytest -m "not slow"` skips them; CI runs everything

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         "--remote-debugging-port=0", "--window-size=1400,1000"]


@pytest.fixture(scope="module")
def chromium_path() -> str:
    path = os.environ.get("MIXTUNE_CHROMIUM") or next(filter(None, map(shutil.which, BROWSERS)), None)
    if path is None:
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail("CI=true but no Chromium found: `make test` should install it (apt-get install chromium)")
        pytest.skip("Chromium is not installed (apt-get install chromium, or `make test` installs it)")
    return path


class DevTools:
    """A headless Chromium and a WebSocket connection to its first page target."""

    def __init__(self, exe: str, profile: Path, timeout_s: float = 30.0):
        self.timeout_s = timeout_s
        self.proc = subprocess.Popen([exe, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file, deadline = profile / "DevToolsActivePort", time.monotonic() + timeout_s
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("Chromium did not open its DevTools port")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        targets = json.loads(no_proxy.open(f"http://127.0.0.1:{port}/json/list", timeout=timeout_s).read())
        ws_url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
        self._handshake(ws_url.split(str(port), 1)[1])
        self.next_id, self.events = 0, []

    def _handshake(self, path: str) -> None:
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        reply = b""
        while b"\r\n\r\n" not in reply:
            reply += self.sock.recv(4096)
        assert reply.startswith(b"HTTP/1.1 101"), reply[:200]

    def _read(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("DevTools closed the connection")
            buf += chunk
        return buf

    def _send(self, text: str) -> None:
        data, mask = text.encode(), os.urandom(4)  # client frames must be masked (RFC 6455 §5.3)
        n = len(data)
        header = b"\x81" + (bytes([0x80 | n]) if n < 126 else
                            bytes([0x80 | 126]) + struct.pack(">H", n) if n < 65536 else
                            bytes([0x80 | 127]) + struct.pack(">Q", n))
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def _recv(self) -> dict:
        message = b""
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            n = struct.unpack(">H", self._read(2))[0] if n == 126 else struct.unpack(">Q", self._read(8))[0] \
                if n == 127 else n
            payload = self._read(n)
            if b0 & 0x0F == 0x8:
                raise ConnectionError("DevTools sent a close frame")
            message += payload
            if b0 & 0x80:  # FIN: the message is complete
                return json.loads(message)

    def call(self, method: str, **params) -> dict:
        """Send one command and return its result; events that arrive meanwhile are kept in `self.events`."""
        self.next_id += 1
        self._send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = self._recv()
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]
            self.events.append(msg)

    def wait_for(self, event: str) -> None:
        while not any(e.get("method") == event for e in self.events):
            self.events.append(self._recv())

    def drain(self, seconds: float) -> None:
        """Collect events for a while (late errors after the load event)."""
        self.sock.settimeout(seconds)
        try:
            while True:
                self.events.append(self._recv())
        except TimeoutError:  # socket.timeout is TimeoutError since 3.10
            pass
        finally:
            self.sock.settimeout(self.timeout_s)

    def load(self, url: str) -> None:
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")
        self.call("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")
        self.drain(0.5)

    def console_errors(self) -> list[str]:
        errors = []
        for e in self.events:
            method, p = e.get("method"), e.get("params", {})
            if method == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
                errors.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
            elif method == "Runtime.exceptionThrown":
                details = p["exceptionDetails"]
                errors.append("exception: " + details.get("exception", {}).get("description", details["text"]))
            elif method == "Log.entryAdded" and p["entry"]["level"] == "error":
                errors.append(f"log: {p['entry']['text']} {p['entry'].get('url', '')}".strip())
        return errors

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def screenshot(self, path: Path) -> Path:
        """The full page (beyond the window) as a PNG."""
        size = self.call("Page.getLayoutMetrics")["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        shot = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True, clip=clip)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def close(self) -> None:
        if getattr(self, "sock", None):
            self.sock.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def browser(chromium_path, tmp_path):
    profile = tmp_path / "profile"
    profile.mkdir()
    tools = DevTools(chromium_path, profile)
    yield tools
    tools.close()


def make_study(study_dir: Path) -> None:
    """What the study grid writes: the base (scored once), single-source runs ("math only", setup "single", one
    stage) and two mixed strategies (setup "mixed", two stages), at two fractions, two seeds, four abilities; each
    stage with its steps and tokens and a metrics.jsonl of its training loss."""
    benches = {"math": ("minilab_math", "strict"), "code": ("minilab_code", "pass@1"),
               "general": ("minilab_instruct", "prompt_level_strict"), "knowledge": ("minilab_knowledge", "exact_match")}
    with ResultsDB(study_dir / "results.sqlite") as db:
        db.upsert_run("base", study="browser", strategy="base", setup="base", status="finished")
        db.add_stage("base", 0, "base", n_examples=0, n_tokens=0, steps=0)
        for ability, (bench, metric) in benches.items():
            db.add_scores("base", "base", bench, ability, {metric: {"knowledge": 0.7, "general": 0.13}.get(ability,
                                                                                                          0.02)})
        for fraction in (1.0, 0.25):
            for seed in (0, 1):
                runs = [(f"{a} only", "single", ["sft"], {a: 1.0}) for a in ("math", "code")]
                runs += [("sequential", "mixed", ["stage1", "stage2"], {"math": 0.2, "code": 0.2}),
                         ("dmt", "mixed", ["stage1", "stage2"], {"math": 0.9, "code": 0.9})]
                for strategy, setup, stages, kept in runs:
                    run_id = f"{strategy}-f{fraction}-s{seed}".replace(" ", "_")
                    db.upsert_run(run_id, study="browser", strategy=strategy, fraction=fraction, seed=seed,
                                  setup=setup, status="finished")
                    for i, stage in enumerate(stages):
                        steps = int(200 * fraction)
                        db.add_stage(run_id, i, stage, n_examples=4 * steps, n_tokens=900 * steps, steps=steps)
                        write_loss(study_dir / run_id / "stages" / f"{i}-{stage}", steps, 2.0 - 0.5 * i + 0.1 * seed)
                        last = i == len(stages) - 1
                        for ability, (bench, metric) in benches.items():
                            value = fraction * (0.6 + 0.05 * seed) * (kept.get(ability, 0.1) if last else 1.0)
                            if ability == "general":
                                value = 0.2 + 0.3 * last
                            db.add_scores(run_id, stage, bench, ability, {metric: value, "n": 100, "rule": "x"})
    (study_dir / "study.json").write_text(json.dumps({"study": "browser-study", "protocol": "fixed_epochs",
                                                      "seeds": [0, 1], "fractions": [1.0, 0.25]}))


def write_loss(folder: Path, steps: int, start: float) -> None:
    folder.mkdir(parents=True)
    rows = [{"step": k, "loss": start * (0.4 + 0.6 * 0.98 ** k)} for k in range(10, steps + 1, 10)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "stage.json").write_text(json.dumps({"steps": steps}))


def test_detector_catches_console_errors(browser, tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><head><link rel='icon' href='data:,'></head><body><h1>bad</h1>"
                   "<img src='missing.png'><script>console.error('boom'); undefinedFunction();</script></body></html>")
    browser.load(bad.as_uri())
    errors = browser.console_errors()
    assert any("boom" in e for e in errors), errors
    assert any("undefinedFunction" in e for e in errors), errors
    assert any("missing.png" in e or "ERR_FILE_NOT_FOUND" in e for e in errors), errors


def test_report_page_loads_cleanly_and_shows_tables_and_plots(browser, tmp_path):
    study_dir = tmp_path / "study"
    study_dir.mkdir()
    make_study(study_dir)
    meta = json.loads((study_dir / "study.json").read_text())
    rows, runs, unscored = read_study(study_dir / "results.sqlite", meta)
    page, _ = write_report(study_dir, rows, meta, runs=runs, unscored=unscored)
    browser.load(page.as_uri())
    assert browser.console_errors() == []
    assert browser.evaluate("document.title") == "mixtune report: browser-study"
    assert browser.evaluate("document.querySelectorAll('table').length") == 3
    assert browser.evaluate("document.querySelector('.protocol').textContent") == "training protocol: fixed epochs"
    # fraction table: per fraction, single-source runs then each mixed strategy; single math and code cells come
    # from the "math only" / "code only" runs, and there is no general-only run
    fraction_rows = browser.evaluate("Array.from(document.querySelectorAll('table')[1].tBodies[0].rows)"
                                     ".map(r => Array.from(r.cells).map(c => c.textContent))")
    assert [r[:2] for r in fraction_rows] == [[f, src] for f in ("1", "1/4")
                                              for src in ("single", "mixed: sequential", "mixed: dmt")]
    assert fraction_rows[0][2:] == ["0.625 ± 0.035 (n=2)", "0.625 ± 0.035 (n=2)", "–", "–"]
    images = browser.evaluate("Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.height])")
    assert len(images) == 4 and all(ok and w > 300 and h > 100 for ok, w, h in images), images
    alts = browser.evaluate("Array.from(document.images).map(i => i.alt)")
    assert alts == ["headline plot", "scaling plot", "stages plot", "loss plot"]
    stage_rows = browser.evaluate("Array.from(document.querySelectorAll('table')[2].tBodies[0].rows)"
                                  ".map(r => Array.from(r.cells).map(c => c.textContent))")
    assert stage_rows[0][:3] == ["sequential", "1", "0: base"] and stage_rows[0][3] == "0.020 (n=1)"
    strategy_rows = browser.evaluate("Array.from(document.querySelectorAll('table')[0].tBodies[0].rows)"
                                     ".map(r => Array.from(r.cells).map(c => c.textContent))")
    assert strategy_rows[0][0] == "base" and strategy_rows[1][-2:] == ["200", "180.0k"]  # steps, tokens

    shot = browser.screenshot(tmp_path / "report.png")
    if os.environ.get("MIXTUNE_SCREENSHOT_DIR"):  # keep a copy to look at
        shutil.copy(shot, Path(os.environ["MIXTUNE_SCREENSHOT_DIR"]) / "report_screenshot.png")
    with Image.open(shot) as im:
        gray = im.convert("L")
        assert im.size[0] >= 1000 and im.size[1] >= 1000
        assert ImageStat.Stat(gray).stddev[0] > 20  # text, table rules and plot lines, not a blank page
        # The bottom of the page holds the plots: that region is drawn too, not empty.
        plots = gray.crop((0, int(gray.size[1] * 0.6), gray.size[0], gray.size[1]))
        assert ImageStat.Stat(plots).stddev[0] > 20
