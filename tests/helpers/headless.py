"""Headless Chromium driven through the DevTools protocol over a pipe (--remote-debugging-pipe):
no port, no websocket library, no browser download. Host names other than 127.0.0.1 resolve to
nothing, so a page can reach loopback only."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from PIL import Image

CHROMIUM = shutil.which("chromium")


class Browser:
    def __init__(self, width: int = 1400, height: int = 900):
        self.profile = tempfile.TemporaryDirectory(prefix="chromium-")
        command = [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            f"--user-data-dir={self.profile.name}",
            f"--window-size={width},{height}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        theirs_in, self.send_fd = os.pipe()
        self.recv_fd, theirs_out = os.pipe()
        theirs_in, theirs_out = above_4(theirs_in), above_4(theirs_out)  # the shell dups to 3, 4
        # Chromium reads commands on fd 3 and writes replies on fd 4.
        self.process = subprocess.Popen(
            ["bash", "-c", f'exec "$@" 3<&{theirs_in} 4>&{theirs_out}', "bash", *command],
            pass_fds=(theirs_in, theirs_out),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        os.close(theirs_in)
        os.close(theirs_out)
        self.buffer, self.last_id = b"", 0
        self.session = self.target = None
        self.new_tab()

    def new_tab(self) -> None:
        """A fresh tab in place of the last: scripts added by open(before=...) are gone."""
        if self.target:
            self.call("Target.closeTarget", targetId=self.target)
        self.session = None
        self.target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=self.target, flatten=True)[
            "sessionId"
        ]
        self.call("Page.enable")

    def call(self, method: str, **params) -> dict:
        self.last_id += 1
        message = {"id": self.last_id, "method": method, "params": params}
        if self.session and not method.startswith(("Target.", "Browser.")):
            message["sessionId"] = self.session
        os.write(self.send_fd, json.dumps(message).encode() + b"\0")
        while True:  # events arrive between replies; nothing here needs them
            reply = self.receive()
            if reply.get("id") == self.last_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def receive(self, timeout: float = 120) -> dict:
        while b"\0" not in self.buffer:
            if not select.select([self.recv_fd], [], [], timeout)[0]:
                raise TimeoutError("chromium did not answer")
            chunk = os.read(self.recv_fd, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium exited")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def open(self, url: str, before: str | None = None) -> None:
        """Loads url; before, if given, is a script that runs ahead of the page's own."""
        if before:
            self.call("Page.addScriptToEvaluateOnNewDocument", source=before)
        self.call("Page.navigate", url=url)

    def evaluate(self, expression: str):
        result = self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(result["exceptionDetails"].get("exception", result))
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60):
        """The expression's first truthy value, polled; AssertionError if none comes."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(
                f"(() => {{ try {{ return {expression}; }} catch (e) {{ return null; }} }})()"
            )
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"never true in the page: {expression}")
            time.sleep(0.25)

    def screenshot(self, path: Path, width: int | None = None) -> Path:
        """The window; with a width, the whole page's height that wide."""
        params = {"format": "png"}
        if width:
            height = self.call("Page.getLayoutMetrics")["cssContentSize"]["height"]
            params |= {
                "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
            }
        Path(path).write_bytes(
            base64.b64decode(self.call("Page.captureScreenshot", **params)["data"])
        )
        return Path(path)

    def close(self) -> None:
        try:
            self.call("Browser.close")
            self.process.wait(timeout=20)
        except (RuntimeError, TimeoutError, OSError, subprocess.TimeoutExpired):
            os.killpg(self.process.pid, signal.SIGKILL)  # the browser and its helpers
            self.process.wait()
        os.close(self.send_fd)
        os.close(self.recv_fd)
        self.profile.cleanup()


def above_4(fd: int) -> int:
    """The same pipe end on a descriptor above 4, so that neither redirection overwrites it."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD, 5)
    os.close(fd)
    return high


def colours(path: Path) -> int:
    """Distinct colours in an image: a blank or one-colour page has a handful."""
    found = Image.open(path).convert("RGB").getcolors(maxcolors=1 << 24)
    return len(found)
