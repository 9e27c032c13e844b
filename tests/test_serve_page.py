"""The web page at `/` of `sage serve`, in a real headless Chromium against a server on a tiny random model.

Chromium is driven over the DevTools protocol through `--remote-debugging-pipe` (NUL-separated JSON on
file descriptors 3 and 4: no websocket, no port, no extra package). The test picks the bundled hazelnut
pair in the page's file inputs, types the bearer key, asks, and checks that the streamed answer, P(yes),
the peak and the overlay canvas match what the API answers to the same request. Skipped where no
Chromium is installed (Debian: `apt-get install chromium`; `make test` tries to).
"""

import base64
import http.client
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("SAGE_TEST_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser") \
    or (os.path.exists("/usr/bin/chromium") and "/usr/bin/chromium") or None
pytestmark = pytest.mark.skipif(not CHROMIUM, reason="no Chromium installed (Debian: apt-get install -y chromium); "
                                                      "the web page is tested in a real browser only")

PAIR = Path(__file__).resolve().parents[1] / "sage_cli" / "assets" / "hazelnut_pair"
KEY = "sk-page-test-0a1b2c3d"
QUESTION = "Is there any defect on the test object?"


class Browser:
    """Headless Chromium and one page, over the DevTools protocol on a pipe."""

    def __init__(self, profile: Path):
        import fcntl

        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        # Above the low numbers, so moving them onto 3 and 4 in the child cannot clobber one another.
        hi_r, hi_w = fcntl.fcntl(to_child_r, fcntl.F_DUPFD, 20), fcntl.fcntl(from_child_w, fcntl.F_DUPFD, 20)

        def onto_3_and_4():
            os.dup2(hi_r, 3)
            os.dup2(hi_w, 4)

        args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--no-default-browser-check", "--remote-debugging-pipe",
                f"--user-data-dir={profile}", "--window-size=1280,1000", "about:blank"]
        self.log = open(profile.parent / "chromium.log", "wb")
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log,
                                     pass_fds=(3, 4), preexec_fn=onto_3_and_4)
        for fd in (to_child_r, from_child_w, hi_r, hi_w):
            os.close(fd)
        self.w, self.r = os.fdopen(to_child_w, "wb", buffering=0), os.fdopen(from_child_r, "rb", buffering=0)
        self.next_id, self.buf, self.session = 0, b"", None
        self.events: list[dict] = []
        self.lock = threading.Lock()
        targets = self.call("Target.getTargets")["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        self.session = self.call("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]
        self.call("Page.enable")
        self.call("Runtime.enable")

    def call(self, method: str, timeout: float = 60, **params) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            msg["sessionId"] = self.session
        self.w.write(json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def _read(self, deadline: float) -> dict:
        import select

        while b"\0" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.r], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer in time")
            piece = os.read(self.r.fileno(), 1 << 20)
            if not piece:
                raise RuntimeError("Chromium closed the DevTools pipe (see chromium.log)")
            self.buf += piece
        raw, self.buf = self.buf.split(b"\0", 1)
        return json.loads(raw)

    def js(self, expression: str):
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression[:80]}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.1)
        raise TimeoutError(f"waited {timeout} s for {expression}")

    def set_file(self, selector: str, path: Path):
        root = self.call("DOM.getDocument")["root"]["nodeId"]
        node = self.call("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
        self.call("DOM.setFileInputFiles", nodeId=node, files=[str(path)])

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png",
                                                    captureBeyondViewport=True)["data"]))
        return path

    def close(self):
        try:
            self.call("Browser.close", timeout=10)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.w.close()
        self.r.close()
        self.log.close()


@pytest.fixture(scope="module")
def server():
    import io

    import torch

    from sage_cli.models.engine import Engine
    from sage_cli.models.sage import SageModel
    from sage_cli.serve.protocol import Limits
    from sage_cli.serve.server import make_server
    from tiny_models import tiny_composed

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    engine = Engine(SageModel(tiny_composed(), k_patches=2), "tiny")
    log = io.StringIO()
    srv = make_server(engine, model_name="tiny", api_key=KEY, limits=Limits(max_tokens=24), log=log)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv, log
    srv.shutdown()
    srv.server_close()


def _get(port: int, path: str, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", path, headers=headers or {})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp, body


def _plain_answer(port: int) -> dict:
    """What the API answers, not streamed, to the request the page makes."""
    def url(name):
        return "data:image/jpeg;base64," + base64.b64encode((PAIR / name).read_bytes()).decode()

    body = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url("crack.jpg")}},
                                                      {"type": "image_url", "image_url": {"url": url("reference.jpg")}},
                                                      {"type": "text", "text": QUESTION}]}]}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.request("POST", "/v1/chat/completions", body=json.dumps(body),
                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
    resp = conn.getresponse()
    data = json.loads(resp.read())
    conn.close()
    assert resp.status == 200, data
    return data


def test_the_page_is_served_without_a_key(server):
    srv, _ = server
    resp, body = _get(srv.port, "/")
    assert resp.status == 200 and resp.getheader("Content-Type").startswith("text/html")
    assert "connect-src 'self'" in resp.getheader("Content-Security-Policy")
    text = body.decode()
    assert "/v1/chat/completions" in text and "Is there any defect on the test object?" in text
    assert "http://" not in text and "https://" not in text  # offline: nothing fetched from elsewhere
    assert _get(srv.port, "/v1/models")[0].status == 401  # the API itself still needs the key
    assert "/\"" not in json.dumps(json.loads(_get(srv.port, "/openapi.json")[1])["paths"])  # not in the schema


def test_the_page_asks_and_draws_in_a_real_browser(server, tmp_path):
    srv, log = server
    want = _plain_answer(srv.port)
    browser = Browser(tmp_path / "profile")
    try:
        browser.call("Page.navigate", url=f"http://127.0.0.1:{srv.port}/")
        browser.wait_for("document.readyState === 'complete' && document.body.dataset.state === 'ready'", 60)
        assert browser.js("document.getElementById('question').value") == QUESTION
        browser.set_file("#test-file", PAIR / "crack.jpg")
        browser.set_file("#ref-file", PAIR / "reference.jpg")
        browser.wait_for("document.getElementById('drop-test').classList.contains('has') && "
                         "document.getElementById('drop-ref').classList.contains('has')", 30)
        # without the key: the API's 401, said on the page
        browser.js("document.getElementById('ask').click()")
        assert browser.wait_for("['done', 'error'].includes(document.body.dataset.state) && "
                                "document.body.dataset.state", 60) == "error"
        assert "401" in browser.js("document.getElementById('status').textContent")
        browser.js(f"document.getElementById('key').value = {json.dumps(KEY)}; "
                   "document.getElementById('key').dispatchEvent(new Event('change'))")
        browser.wait_for("document.getElementById('model').textContent === 'model: tiny'", 30)
        browser.js("document.getElementById('ask').click()")
        state = browser.wait_for("['done', 'error'].includes(document.body.dataset.state) && "
                                 "document.body.dataset.state", 180)
        status = browser.js("document.getElementById('status').textContent")
        shot = browser.screenshot(tmp_path / "serve_page.png")
        assert state == "done", status

        # the streamed text is the API's answer to the same request; the numbers are its numbers
        answer = browser.js("document.getElementById('answer').textContent")
        assert answer == want["choices"][0]["message"]["content"] and answer.strip()
        sage = want["sage"]
        assert browser.js("document.getElementById('pyes').textContent") == f"{sage['p_yes']:.3f}"
        peak = sage["anomaly"]["peak"]
        assert browser.js("document.getElementById('peak').textContent").startswith(f"row {peak[0]}, col {peak[1]} ")
        assert browser.js("window.sageLast.anomaly.selected") == sage["anomaly"]["selected"]
        assert browser.js("document.getElementById('finish').textContent") == want["choices"][0]["finish_reason"]

        # the overlay: a canvas the size of the test image, over it, painted at the peak and on the K patches
        browser.wait_for("document.body.dataset.overlay === 'drawn'", 30)
        canvas = browser.js("""(() => {
            const c = document.getElementById('heatmap'), ctx = c.getContext('2d');
            const a = window.sageLast.anomaly, [gh, gw] = a.grid;
            const at = (r, col) => Array.from(ctx.getImageData(Math.floor((col + 0.5) * c.width / gw),
                                                               Math.floor((r + 0.5) * c.height / gh), 1, 1).data);
            const all = ctx.getImageData(0, 0, c.width, c.height).data;
            let painted = 0;
            for (let i = 3; i < all.length; i += 4) painted += all[i] > 0;
            const box = c.getBoundingClientRect(), img = document.getElementById('stage-img').getBoundingClientRect();
            return {w: c.width, h: c.height, peak: at(a.peak[0], a.peak[1]), painted, visible: box.width > 50,
                    over: Math.abs(box.left - img.left) < 1 && Math.abs(box.top - img.top) < 1
                          && Math.abs(box.width - img.width) < 1 && Math.abs(box.height - img.height) < 1};
        })()""")
        assert (canvas["w"], canvas["h"]) == (512, 512) and canvas["visible"] and canvas["over"]
        assert canvas["peak"][3] > 0 and canvas["painted"] > 0
        # the outlines of the K selected patches are cyan
        edges = browser.js("""(() => {
            const c = document.getElementById('heatmap'), ctx = c.getContext('2d');
            const a = window.sageLast.anomaly, [gh, gw] = a.grid;
            return a.selected.map((i) => {
                const r = Math.floor(i / gw), col = i % gw;
                return Array.from(ctx.getImageData(Math.floor((col + 0.5) * c.width / gw), Math.ceil(r * c.height / gh) + 1, 1, 1).data);
            });
        })()""")
        assert all(px[0] == 0 and px[1] == 255 and px[2] == 255 and px[3] == 255 for px in edges), edges
        assert shot.stat().st_size > 10_000
        # a server that sends the whole map [h][w] gets it drawn along the ramp, opacity following the value
        hot = browser.js("""(() => {
            const a = window.sageLast.anomaly, [gh, gw] = a.grid;
            const map = Array.from({length: gh}, (_, r) => Array.from({length: gw}, (_, c) => r === 0 && c === gw - 1 ? 1 : 0));
            document.body.dataset.overlay = '';
            window.sagePage.showSage({...window.sageLast, anomaly: {...a, map, selected: []}});
        })()""")
        browser.wait_for("document.body.dataset.overlay === 'drawn'", 30)
        hot = browser.js("""(() => {
            const c = document.getElementById('heatmap'), ctx = c.getContext('2d');
            const px = (x, y) => Array.from(ctx.getImageData(x, y, 1, 1).data);
            return {hot: px(c.width - 2, 1), cold: px(1, c.height - 2)};
        })()""")
        assert hot["hot"][:3] == [252, 255, 164] and 180 <= hot["hot"][3] <= 200 and hot["cold"][3] == 0, hot
        copy_to = os.environ.get("SAGE_PAGE_SCREENSHOT")  # to look at it: SAGE_PAGE_SCREENSHOT=/tmp/page.png
        if copy_to:
            shutil.copyfile(shot, copy_to)
    finally:
        browser.close()
    assert KEY not in log.getvalue()  # the key is never logged
