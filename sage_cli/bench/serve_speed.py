"""`sage bench speed serve`: N concurrent clients against one `sage serve` on loopback, and the same requests
sent one at a time to the same server in the same run (the baseline the ratio is taken against).

Each client sends its own image pair (a bundled photo, flipped or rotated so that no two requests are
the same) with a streamed chat request, and reads the stream to the end: latency is the whole request,
time to first token the first content chunk. Reported per concurrency level: requests/s, p50 / p95
latency and time to first token, errors, the answers' agreement with one-at-a-time (greedy), the
process's peak RSS, and requests/s divided by one-at-a-time's.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

QUESTION = "Is there any defect on the test object?"


def _data_url(img) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def pairs(test, reference, n: int) -> list[tuple[str, str]]:
    """`n` distinct (test, reference) data URLs of one size: the test photo (cut square) flipped and turned."""
    from PIL import Image

    ops = [None, Image.FLIP_LEFT_RIGHT, Image.FLIP_TOP_BOTTOM, Image.ROTATE_90, Image.ROTATE_180, Image.ROTATE_270,
           Image.TRANSPOSE, Image.TRANSVERSE]
    side = min(test.size)
    test = test.crop((0, 0, side, side))  # square, so that every flip and turn keeps the size
    ref = _data_url(reference.resize(test.size))  # the server wants the pair the same size
    out = []
    for i in range(n):
        img = test if ops[i % len(ops)] is None else test.transpose(ops[i % len(ops)])
        if i >= len(ops):
            img = img.rotate(i // len(ops))  # beyond 8: turned by a few degrees more
        out.append((_data_url(img), ref))
    return out


def _ask(url: str, pair: tuple[str, str], max_tokens: int) -> dict:
    body = {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": pair[0]}}, {"type": "image_url", "image_url": {"url": pair[1]}},
        {"type": "text", "text": QUESTION}]}], "max_tokens": max_tokens, "temperature": 0, "stream": True}
    req = urllib.request.Request(url + "/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    ttft, text = None, []
    try:
        with urllib.request.urlopen(req, timeout=600) as resp:
            for raw in resp:
                line = raw.decode().strip()
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                delta = json.loads(line[6:])["choices"][0].get("delta", {}).get("content")
                if delta:
                    ttft = ttft if ttft is not None else time.perf_counter() - t0
                    text.append(delta)
    except Exception as e:  # a refused or reset connection, or an HTTP error: what this benchmark counts
        return {"error": f"{type(e).__name__}: {e}", "latency": time.perf_counter() - t0}
    return {"text": "".join(text), "ttft": ttft, "latency": time.perf_counter() - t0}


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def _level(url: str, reqs: list, clients: int, max_tokens: int) -> dict:
    t0 = time.perf_counter()
    if clients == 1:
        res = [_ask(url, p, max_tokens) for p in reqs]
    else:
        with ThreadPoolExecutor(clients) as pool:
            res = list(pool.map(lambda p: _ask(url, p, max_tokens), reqs))
    wall = time.perf_counter() - t0
    ok = [r for r in res if "error" not in r]
    lat, ttft = [r["latency"] for r in ok], [r["ttft"] for r in ok if r["ttft"] is not None]
    first_error = next((r["error"] for r in res if "error" in r), None)
    return {"clients": clients, "requests": len(res), "errors": len(res) - len(ok), "first_error": first_error,
            "wall_s": wall,
            "requests_per_s": len(ok) / wall if wall > 0 else None, "p50_s": _pct(lat, 0.5), "p95_s": _pct(lat, 0.95),
            "ttft_p50_s": _pct(ttft, 0.5), "ttft_p95_s": _pct(ttft, 0.95), "answers": [r.get("text") for r in res]}


def serve_speed(engine, test, reference, clients: list[int], max_tokens: int = 16, log=print) -> dict:
    """Every level of `clients` (each sends that many requests at once), then the same requests one at a time."""
    import resource

    from sage_cli.serve.protocol import Limits
    from sage_cli.serve.server import make_server

    srv = make_server(engine, limits=Limits(max_tokens=max(max_tokens, 16)), quiet=True,
                      max_queue=max(clients) + 8)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = srv.url  # http://127.0.0.1:PORT/v1
    try:
        n = max(clients)
        reqs = pairs(test, reference, n)
        _ask(url, reqs[0], 2)  # warm-up: the first request pays one-time costs
        log(f"one at a time: {n} requests")
        alone = _level(url, reqs, 1, max_tokens)
        levels = []
        for c in clients:
            log(f"{c} concurrent clients")
            lv = _level(url, reqs[:c], c, max_tokens)
            lv["same_answers"] = sum(a == b for a, b in zip(lv["answers"], alone["answers"]))
            lv["ratio_vs_one_at_a_time"] = (lv["requests_per_s"] / alone["requests_per_s"]
                                            if lv["requests_per_s"] and alone["requests_per_s"] else None)
            levels.append(lv)
    finally:
        srv.shutdown()
        srv.server_close()
    for lv in [alone, *levels]:
        lv.pop("answers")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    return {"max_tokens": max_tokens, "one_at_a_time": alone, "levels": levels, "peak_rss_mb": peak_mb,
            "backbone": engine.backbone_name}
