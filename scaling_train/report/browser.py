"""Render an HTML file in headless Chromium over the DevTools protocol: console errors, images, screenshot.

    python -m scaling_train.report.browser runs/quickstart/report.html docs/report.png [--height 2400]

Standard library only (a minimal WebSocket client), so checking a report needs no extra package, just a
Chromium binary (Debian: ``apt-get install chromium``; found as chromium, chromium-browser or
google-chrome, or ``$CHROMIUM``). Used by tests/report to check that the report renders offline.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio",
)  # fmt: skip


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome binary, or None."""
    env = os.environ.get("CHROMIUM")
    if env and Path(env).is_file():
        return env
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        p = shutil.which(name)
        if p:
            return p
    return None


# ------------------------------------------------------------------------------------ websocket
class _WebSocket:
    """Just enough RFC 6455 for the DevTools protocol: text frames, masked client frames, fragments."""

    def __init__(self, url: str, timeout: float) -> None:
        m = re.match(r"ws://([^:/]+):(\d+)(/.*)", url)
        if not m:
            raise ValueError(f"not a ws:// URL: {url!r}")
        host, port, path = m.group(1), int(m.group(2)), m.group(3)
        self.sock = socket.create_connection((host, port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        req = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        self.sock.sendall(req.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("DevTools closed the connection during the handshake")
            head += chunk
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status:
            raise ConnectionError(f"WebSocket handshake failed: {status.decode(errors='replace')}")
        self.buf = head.split(b"\r\n\r\n", 1)[1]

    def _recv_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(max(65536, n - len(self.buf)))
            if not chunk:
                raise ConnectionError("DevTools closed the connection")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def send(self, text: str) -> None:
        data = text.encode()
        n = len(data)
        head = bytes([0x81])  # FIN + text
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 1 << 16:
            head += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack(">Q", n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        self.sock.sendall(head + mask + masked)

    def recv(self) -> str:
        parts = []
        while True:
            b0, b1 = self._recv_exact(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._recv_exact(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._recv_exact(8))[0]
            mask = self._recv_exact(4) if b1 & 0x80 else None
            payload = self._recv_exact(n)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            op = b0 & 0x0F
            if op == 0x8:
                raise ConnectionError("DevTools closed the WebSocket")
            if op == 0x9:  # ping -> pong is optional for our short sessions
                continue
            if op in (0x1, 0x0, 0x2):
                parts.append(payload)
                if b0 & 0x80:
                    return b"".join(parts).decode()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


# ------------------------------------------------------------------------------------ page check
@dataclass
class PageCheck:
    """What the browser saw: console errors, uncaught exceptions, failed loads, images, page size."""

    errors: list[str] = field(default_factory=list)
    images: list[dict[str, Any]] = field(default_factory=list)
    """One per <img>: src (first 60 chars), complete, naturalWidth, naturalHeight."""
    title: str = ""
    height: int = 0
    text: str = ""
    screenshot: Path | None = None

    @property
    def broken_images(self) -> list[dict[str, Any]]:
        return [i for i in self.images if not i["complete"] or i["naturalWidth"] == 0]


class _Session:
    def __init__(self, ws: _WebSocket, timeout: float) -> None:
        self.ws, self.timeout, self.next_id, self.events = ws, timeout, 0, []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        my = self.next_id
        self.ws.send(json.dumps({"id": my, "method": method, "params": params}))
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == my:
                if "error" in msg:
                    raise RuntimeError(f"DevTools {method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)
        raise TimeoutError(f"DevTools {method}: no answer in {self.timeout}s")

    def wait_event(self, method: str) -> dict[str, Any]:
        for e in self.events:
            if e["method"] == method:
                return e
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv())
            if "method" in msg:
                self.events.append(msg)
                if msg["method"] == method:
                    return msg
        raise TimeoutError(f"DevTools: no {method} event in {self.timeout}s")


def check_page(
    html_path: str | Path,
    screenshot: str | Path | None = None,
    *,
    width: int = 1320,
    max_height: int | None = None,
    chromium: str | None = None,
    timeout: float = 60.0,
) -> PageCheck:
    """Open ``html_path`` in headless Chromium (no network needed), collect console errors and image
    states, and save a full-page PNG to ``screenshot`` (cut at ``max_height`` CSS pixels if given)."""
    exe = chromium or find_chromium()
    if exe is None:
        raise FileNotFoundError("no Chromium binary (apt-get install chromium, or set $CHROMIUM)")
    url = Path(html_path).resolve().as_uri()
    # Chromium's helper processes can still be writing the profile when the main process has exited:
    # a leftover scratch folder must not turn a finished check into an error
    with tempfile.TemporaryDirectory(prefix="st-chromium-", ignore_cleanup_errors=True) as profile:
        proc = subprocess.Popen(
            [exe, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            ws_url, deadline, seen = None, time.monotonic() + timeout, []
            while time.monotonic() < deadline:
                line = proc.stderr.readline()
                if not line:
                    if proc.poll() is not None:
                        break
                    continue
                seen.append(line)
                m = re.search(r"DevTools listening on (ws://\S+)", line)
                if m:
                    ws_url = m.group(1)
                    break
            if ws_url is None:
                raise RuntimeError(f"Chromium did not start DevTools: {''.join(seen[-10:])}")
            port = int(re.match(r"ws://[^:]+:(\d+)/", ws_url).group(1))
            browser = _Session(_WebSocket(ws_url, timeout), timeout)
            target = browser.call("Target.createTarget", url="about:blank")["targetId"]
            page = _Session(_WebSocket(f"ws://127.0.0.1:{port}/devtools/page/{target}", timeout), timeout)
            for domain in ("Page", "Runtime", "Log", "Network"):
                page.call(f"{domain}.enable")
            page.call(
                "Emulation.setDeviceMetricsOverride",
                width=width,
                height=900,
                deviceScaleFactor=1,
                mobile=False,
            )
            page.call("Page.navigate", url=url)
            page.wait_event("Page.loadEventFired")
            res = page.call(
                "Runtime.evaluate", returnByValue=True,
                expression="JSON.stringify({title: document.title, height: document.documentElement.scrollHeight,"
                " text: document.body ? document.body.innerText : '',"
                " images: Array.from(document.images).map(i => ({src: i.src.slice(0, 60), complete: i.complete,"
                " naturalWidth: i.naturalWidth, naturalHeight: i.naturalHeight}))})",
            )  # fmt: skip
            info = json.loads(res["result"]["value"])
            out = PageCheck(
                images=info["images"], title=info["title"], height=int(info["height"]), text=info["text"]
            )
            if screenshot is not None:
                h = min(out.height, max_height) if max_height else out.height
                page.call(
                    "Emulation.setDeviceMetricsOverride",
                    width=width,
                    height=h,
                    deviceScaleFactor=1,
                    mobile=False,
                )
                shot = page.call("Page.captureScreenshot", format="png", captureBeyondViewport=False)
                Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
                Path(screenshot).write_bytes(base64.b64decode(shot["data"]))
                out.screenshot = Path(screenshot)
            for e in page.events:
                m, p = e["method"], e.get("params", {})
                if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                    out.errors.append(
                        "console: " + " ".join(str(a.get("value", a.get("description"))) for a in p["args"])
                    )
                elif m == "Runtime.exceptionThrown":
                    out.errors.append("exception: " + p["exceptionDetails"].get("text", ""))
                elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
                    out.errors.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
                elif m == "Network.loadingFailed":
                    out.errors.append(f"network: {p.get('errorText')} ({p.get('type')})")
            page.ws.close()
            browser.ws.close()
            return out
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("html")
    ap.add_argument("png")
    ap.add_argument("--width", type=int, default=1320)
    ap.add_argument("--height", type=int, default=None, help="cut the screenshot at this height (CSS px)")
    a = ap.parse_args(argv)
    res = check_page(a.html, a.png, width=a.width, max_height=a.height)
    print(f"{a.png}: page height {res.height}px, {len(res.images)} images, {len(res.broken_images)} broken")
    for e in res.errors:
        print("  error:", e)
    return 1 if res.errors or res.broken_images else 0


if __name__ == "__main__":
    raise SystemExit(main())
