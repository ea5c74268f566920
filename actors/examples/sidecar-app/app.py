#!/usr/bin/env python3
"""A tiny Troupe sidecar application: actor types implemented over localhost HTTP.

The Troupe node keeps mailboxes, placement and membership, and POSTs every message to
    /actors/{type}/{id}/{method}        body = payload, 2xx body = reply
plus, for state that must follow the actor when it moves to another node,
    /actors/{type}/{id}/$activate       body = the state the last activation left
    /actors/{type}/{id}/$deactivate     reply body = the state to keep
(see actors/SIDECAR.md). Every answer to a message also carries the actor's state after
the turn (header `troupe-state-length: N`, the body's first N bytes): with a durable
store (`spec.state.store: postgres`) the node writes it before it replies, so a crash of
this pod loses nothing that was acknowledged. The node delivers one message at a time per actor, so the
handlers below need no locking per actor; the global dict is guarded for the server's
threads.

Types:
    greeter  greet {"name": "..."} -> {"greeting": "hello ...", "count": n}
    cart     add {"item": "...", "qty": n} -> {"items": {...}};  list -> {"items": {...}}

Run: PORT=3000 python3 app.py   (listens on 127.0.0.1 only)
"""

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

STATE = {}  # (type, id) -> dict
LOCK = threading.Lock()


def greeter(state, method, args):
    if method not in ("greet", "default"):
        return 404, {"error": f"greeter has no method {method!r}"}
    state["count"] = state.get("count", 0) + 1
    name = args.get("name", "world")
    return 200, {"greeting": f"hello {name}", "count": state["count"]}


def cart(state, method, args):
    items = state.setdefault("items", {})
    if method == "add":
        item = str(args.get("item", ""))
        if not item:
            return 400, {"error": "add needs an item"}
        items[item] = items.get(item, 0) + int(args.get("qty", 1))
        return 200, {"items": items}
    if method in ("list", "default"):
        return 200, {"items": items}
    return 404, {"error": f"cart has no method {method!r}"}


TYPES = {"greeter": greeter, "cart": cart}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def reply(self, status, body, state=None):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        if state is not None:
            # The actor's state after this turn, ahead of the reply in the body.
            encoded = json.dumps(state).encode() if state else b""
            self.send_header("troupe-state-length", str(len(encoded)))
            data = encoded + data
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/healthz":
            return self.reply(200, {"ok": True})
        return self.reply(404, {"error": "not found"})

    def do_POST(self):
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        parts = [unquote(p) for p in self.path.split("?")[0].split("/")]
        if len(parts) != 5 or parts[1] != "actors":
            return self.reply(404, {"error": "expected /actors/{type}/{id}/{method}"})
        _, _, actor_type, actor_id, method = parts
        handler = TYPES.get(actor_type)
        if handler is None:
            return self.reply(404, {"error": f"unknown actor type {actor_type!r}"})
        key = (actor_type, actor_id)
        if method == "$activate":
            with LOCK:
                STATE[key] = json.loads(raw or b"{}")
            return self.reply(200, b"")
        if method == "$deactivate":
            with LOCK:
                state = STATE.pop(key, {})
            return self.reply(200, json.dumps(state).encode() if state else b"")
        try:
            args = json.loads(raw) if raw.strip() else {}
        except ValueError:
            return self.reply(400, {"error": "payload is not JSON"})
        with LOCK:
            state = STATE.setdefault(key, {})
        status, body = handler(state, method, args if isinstance(args, dict) else {})
        return self.reply(status, body, state if 200 <= status < 300 else None)


def main():
    port = int(os.environ.get("PORT", "3000"))
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"sidecar app listening on 127.0.0.1:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
