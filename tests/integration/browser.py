"""Headless Chromium (Debian's `chromium`) driven over the DevTools
protocol with python3-websocket: a real browser's CORS, cookies and
Sec-Fetch-Site, for the tests of what a web page can and cannot get from
tokend. Names under *.example.test resolve to 127.0.0.1 inside the browser
(--host-resolver-rules), so pages have real origins without any DNS."""
import json
import os
import shutil
import subprocess

from conftest import terminate, wait_for


class Browser:
    def __init__(self, workdir):
        self.exe = shutil.which("chromium")
        self.dir = os.path.join(workdir, "chromium")
        os.makedirs(self.dir, exist_ok=True)
        self.proc = subprocess.Popen(
            [self.exe, "--headless=new", "--no-sandbox", "--no-first-run", "--no-proxy-server",
             "--disable-gpu", "--remote-debugging-port=0", f"--user-data-dir={self.dir}",
             "--host-resolver-rules=MAP *.example.test 127.0.0.1", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(workdir, "chromium.log"), "wb"))
        port_file = os.path.join(self.dir, "DevToolsActivePort")
        wait_for(lambda: os.path.exists(port_file) and len(open(port_file).read().split()) == 2,
                 timeout=30, what="chromium to open its DevTools port")
        port, path = open(port_file).read().split()
        import websocket
        self.ws = websocket.create_connection(f"ws://127.0.0.1:{port}{path}", timeout=30)
        self.next_id = 0
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Page.enable", session=True)

    def call(self, method, session=False, **params):
        """Sends one command and returns its result; events seen meanwhile are kept."""
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        self.ws.send(json.dumps(msg))
        while True:
            m = json.loads(self.ws.recv())
            if m.get("id") == self.next_id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m["result"]
            self.events.append(m)

    events = []

    def open(self, url):
        """Navigates and waits for the page's load event."""
        self.events.clear()
        self.call("Page.navigate", session=True, url=url)
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events):
            self.events.append(json.loads(self.ws.recv()))

    def run(self, script):
        """Runs an async function body in the page; returns what it returns (JSON)."""
        r = self.call("Runtime.evaluate", session=True, expression=f"(async () => {{ {script} }})()",
                      awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in r:
            raise RuntimeError(r["exceptionDetails"])
        return r["result"].get("value")

    def close(self):
        try:
            self.ws.close()
        finally:
            terminate(self.proc)
