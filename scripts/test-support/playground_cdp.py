#!/usr/bin/env python3
"""Drive the `emo serve` playground page (GET /) in headless Chromium over the DevTools protocol.

    python playground_cdp.py --url http://127.0.0.1:PORT/ --api-key KEY --screenshot OUT.png \
        [--chromium /usr/bin/chromium] [--timeout 120] [--emotion anger] [--alpha 4] [--bad-alpha]

Normal mode: load the page, enter the key, steer with --emotion/--alpha, send a message, wait for both
streams, check the replies, the coloured tokens and the directions view, save a full-page screenshot and
print one JSON summary line. --bad-alpha: steer with alpha 1000 and check the server's refusal (naming
`steering.alpha`) is shown in #error. Exit 0 on success, 1 on any failure (with what was expected and
what the page showed). Needs the stdlib and `websocket-client`.
"""
import argparse
import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

import websocket  # websocket-client

# What the page shows, gathered in one evaluation for waiting and for failure reports.
SNAPSHOT_JS = r"""(() => {
  const t = (id) => { const e = document.getElementById(id); return e ? e.textContent : null; };
  // Summaries are rows of small items: join them with spaces to keep them legible in reports.
  const items = (id) => { const e = document.getElementById(id); if (!e) return null;
    return e.children.length ? [...e.children].map((c) => c.textContent).join(' ') : e.textContent; };
  const toks = [...document.querySelectorAll('#reply-controlled .tok[data-top]')];
  return {
    models: (document.body && document.body.dataset.models) || null,  // undefined would drop the key
    model: t('model'), status: t('status'), error: t('error'),
    controlled: t('reply-controlled'), plain: t('reply-plain'),
    coloured: toks.length,
    plain_coloured: document.querySelectorAll('#reply-plain .tok[data-top]').length,
    tops: toks.map((s) => s.dataset.top),
    summary_controlled: items('summary-controlled'), summary_plain: items('summary-plain'),
    directions_drawn: document.getElementById('directions-view')?.dataset.drawn || null,
    directions_cells: document.querySelectorAll('#directions-view .cos-cell').length,
    directions_text: t('directions-view'),
    circuits_drawn: document.getElementById('circuits-view')?.dataset.drawn || null,
    trace_note: t('trace-note'),
  };
})()"""


class Failure(Exception):
    pass


class Cdp:
    """A minimal DevTools client: numbered commands, events kept for later inspection."""

    def __init__(self, ws_url, timeout):
        # Chromium refuses websocket handshakes carrying an unexpected Origin; send none.
        self.ws = websocket.create_connection(ws_url, timeout=timeout, suppress_origin=True)
        self.next_id = 0
        self.events = []

    def call(self, method, params=None, timeout=30):
        self.next_id += 1
        mid = self.next_id
        self.ws.send(json.dumps({"id": mid, "method": method, "params": params or {}}))
        deadline = time.time() + timeout
        while time.time() < deadline:
            self.ws.settimeout(max(0.1, deadline - time.time()))
            try:
                msg = json.loads(self.ws.recv())
            except websocket.WebSocketTimeoutException:
                break
            if msg.get("id") == mid:
                if "error" in msg:
                    raise Failure(f"{method} failed: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)
        raise Failure(f"no answer to {method} within {timeout}s")

    def eval(self, expr, timeout=30):
        r = self.call("Runtime.evaluate", {"expression": expr, "returnByValue": True, "awaitPromise": True}, timeout)
        if "exceptionDetails" in r:
            raise Failure(f"page script failed: {r['exceptionDetails'].get('text')} in {expr[:80]!r}")
        return r.get("result", {}).get("value")

    def page_errors(self):
        """Uncaught exceptions and console errors seen so far."""
        out = []
        for e in self.events:
            p = e.get("params", {})
            if e["method"] == "Runtime.exceptionThrown":
                d = p.get("exceptionDetails", {})
                out.append("exception: " + (d.get("exception", {}).get("description") or d.get("text", "")))
            elif e["method"] == "Runtime.consoleAPICalled" and p.get("type") == "error":
                out.append("console.error: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
            elif (e["method"] == "Log.entryAdded" and p.get("entry", {}).get("level") == "error"
                  and p["entry"].get("source") != "network"):  # a 401/400 answer is logged too; it is expected
                out.append("log: " + p["entry"].get("text", ""))
        return out

    def close(self):
        try:
            self.ws.close()
        except Exception:
            pass


def launch(chromium, user_dir, timeout):
    args = [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", f"--user-data-dir={user_dir}",
            "--remote-debugging-port=0", "--window-size=1400,1000", "--no-first-run", "--no-default-browser-check",
            "about:blank"]
    log = open(os.path.join(user_dir, "chromium.log"), "wb")
    # A session of its own, so that its helper processes can be ended with it.
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    port_file = os.path.join(user_dir, "DevToolsActivePort")
    deadline = time.time() + min(timeout, 60)
    while time.time() < deadline:
        if proc.poll() is not None:
            raise Failure(f"chromium exited with {proc.returncode}; see its log:\n" + tail(os.path.join(user_dir, "chromium.log")))
        try:
            with open(port_file) as f:
                port = int(f.readline().strip())
            return proc, port
        except (OSError, ValueError):
            time.sleep(0.1)
    raise Failure("chromium wrote no DevToolsActivePort within 60s:\n" + tail(os.path.join(user_dir, "chromium.log")))


def tail(path, n=2000):
    try:
        with open(path, "rb") as f:
            return f.read()[-n:].decode("utf-8", "replace")
    except OSError:
        return ""


def stop(proc):
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
    try:  # helper processes (renderer, GPU, zygote) left in its session
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def page_target(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
        targets = json.load(r)
    pages = [t for t in targets if t.get("type") == "page"]
    if not pages:
        raise Failure(f"no page target among {targets}")
    return pages[0]["webSocketDebuggerUrl"]


def wait_for(cdp, what, pred, timeout):
    """Poll the page until pred(snapshot) holds; the last snapshot goes into the failure."""
    deadline = time.time() + timeout
    snap = None
    while time.time() < deadline:
        snap = cdp.eval(SNAPSHOT_JS)
        if pred(snap):
            return snap
        time.sleep(0.25)
    raise Failure(f"{what} within {timeout:.0f}s (timed out)", snap)


def set_value(cdp, element_id, value):
    """Set a field as a user would, firing input and change so the page's listeners run."""
    js = f"""(() => {{ const e = document.getElementById({json.dumps(element_id)});
      if (!e) return false; e.value = {json.dumps(str(value))};
      e.dispatchEvent(new Event('input', {{bubbles: true}})); e.dispatchEvent(new Event('change', {{bubbles: true}}));
      return e.value === {json.dumps(str(value))}; }})()"""
    if not cdp.eval(js):
        raise Failure(f"could not set #{element_id} to {value!r}", cdp.eval(SNAPSHOT_JS))


def click(cdp, element_id):
    """A real mouse click at the element's centre."""
    box = cdp.eval(f"""(() => {{ const e = document.getElementById({json.dumps(element_id)}); if (!e) return null;
      e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect();
      return {{x: r.left + r.width / 2, y: r.top + r.height / 2, disabled: !!e.disabled}}; }})()""")
    if not box or box["disabled"]:
        raise Failure(f"#{element_id} is missing or disabled", cdp.eval(SNAPSHOT_JS))
    for kind in ("mousePressed", "mouseReleased"):
        cdp.call("Input.dispatchMouseEvent", {"type": kind, "x": box["x"], "y": box["y"], "button": "left", "clickCount": 1})


def screenshot(cdp, path):
    m = cdp.call("Page.getLayoutMetrics")
    size = m.get("cssContentSize") or m["contentSize"]
    shot = cdp.call("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}}, timeout=60)
    with open(path, "wb") as f:
        f.write(base64.b64decode(shot["data"]))


def run(args, cdp):
    for domain in ("Page", "Runtime", "Log"):
        cdp.call(f"{domain}.enable")
    nav = cdp.call("Page.navigate", {"url": args.url})
    if nav.get("errorText"):
        raise Failure(f"the page at {args.url} to load, got {nav['errorText']}")
    # The first answer to /v1/models: loaded, or an error (401 before the key is entered).
    first = wait_for(cdp, "the page to ask for the models", lambda s: s and s.get("models") in ("loaded", "error"), args.timeout)
    if args.api_key:
        set_value(cdp, "api-key", args.api_key)
        time.sleep(0.5)  # the page retries after a short debounce
    snap = wait_for(cdp, "the models to load", lambda s: s.get("models") in ("loaded", "error"), args.timeout)
    if snap["models"] != "loaded":  # a wrong key or a down server will not mend itself: say so now
        raise Failure("the models to load (body[data-models=loaded]) with the given --api-key", snap)

    set_value(cdp, "control", "steering")
    set_value(cdp, "emotion", args.emotion)
    set_value(cdp, "alpha", 1000 if args.bad_alpha else args.alpha)
    cdp.eval("document.getElementById('message').focus()")
    cdp.call("Input.insertText", {"text": args.message})  # typed, as from a keyboard
    click(cdp, "send")
    snap = wait_for(cdp, "#status to say done", lambda s: (s.get("status") or "").strip() == "done", args.timeout)
    snap = cdp.eval(SNAPSHOT_JS)  # after any last rendering
    screenshot(cdp, args.screenshot)

    problems = []
    if args.bad_alpha:
        if "steering.alpha" not in (snap["error"] or ""):
            problems.append("#error should show the server's message naming `steering.alpha`")
        summary = {"mode": "bad-alpha", "error": snap["error"], "plain": snap["plain"], "screenshot": args.screenshot}
    else:
        if not (snap["controlled"] or "").strip():
            problems.append("#reply-controlled should not be empty")
        if not (snap["plain"] or "").strip():
            problems.append("#reply-plain should not be empty")
        if snap["coloured"] < 1:
            problems.append("#reply-controlled should hold at least one .tok span with data-top")
        if (snap["error"] or "").strip():
            problems.append("#error should be empty")
        if snap["directions_cells"] < 36:
            problems.append("#directions-view should draw the 6x6 cosine map (36 .cos-cell)")
        tops = {}
        for t in snap["tops"]:
            tops[t] = tops.get(t, 0) + 1
        summary = {"mode": "steering", "emotion": args.emotion, "alpha": args.alpha,
                   "model": (snap["model"] or "").removeprefix("model "),
                   "controlled": snap["controlled"], "plain": snap["plain"], "coloured_tokens": snap["coloured"],
                   "top_emotions": dict(sorted(tops.items(), key=lambda kv: -kv[1])),
                   "summary_controlled": snap["summary_controlled"], "summary_plain": snap["summary_plain"],
                   "circuits_drawn": snap["circuits_drawn"], "screenshot": args.screenshot,
                   "first_models_state": first["models"]}
    errors = cdp.page_errors()
    if errors:
        problems.append("the page should raise no script errors")
    if problems:
        raise Failure("; ".join(problems), dict(snap, page_errors=errors))
    print(json.dumps(summary, ensure_ascii=False))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--api-key", default="")
    ap.add_argument("--screenshot", required=True)
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--timeout", type=float, default=120)
    ap.add_argument("--emotion", default="anger")
    ap.add_argument("--alpha", type=float, default=4.0)
    ap.add_argument("--message", default="Tell me about your day in two sentences.")
    ap.add_argument("--bad-alpha", action="store_true", help="send alpha 1000 and expect the 400 in #error")
    args = ap.parse_args()

    user_dir = tempfile.mkdtemp(prefix="playground-cdp-")
    proc = cdp = None
    code = 1
    try:
        proc, port = launch(args.chromium, user_dir, args.timeout)
        cdp = Cdp(page_target(port), args.timeout)
        run(args, cdp)
        code = 0
    except Failure as f:
        print(f"playground_cdp: FAILED: expected {f.args[0]}", file=sys.stderr)
        if len(f.args) > 1 and f.args[1] is not None:
            print("playground_cdp: the page showed: " + json.dumps(f.args[1], ensure_ascii=False, indent=1), file=sys.stderr)
        if cdp is not None:
            for e in cdp.page_errors():
                print("playground_cdp: page error: " + e, file=sys.stderr)
            try:  # a screenshot of the failure helps more than the text alone
                screenshot(cdp, args.screenshot)
                print(f"playground_cdp: screenshot of the failure: {args.screenshot}", file=sys.stderr)
            except Exception:
                pass
    except Exception as e:  # noqa: BLE001 - any other breakage is a failure too, with its cause
        print(f"playground_cdp: FAILED: {type(e).__name__}: {e}", file=sys.stderr)
    finally:
        if cdp is not None:
            cdp.close()
        stop(proc)
        shutil.rmtree(user_dir, ignore_errors=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
