"""An app-governed stream with authentication: Flask decides who may listen, the bridge holds the stream.

``GET /events`` needs a logged-in session (``POST /login``) or ``Authorization: Bearer <token>``.
An authorised request is answered with an empty 200 carrying ``X-SSE-Offload: user-<name>``: the
bridge drops the body and turns the connection into a stream on the Redis channel ``user-<name>``
(no routing rule needed). Anyone else gets a 401 with a JSON body, passed through as is.

Run it behind the bridge as a separate HTTP server (``ssebridge.ini`` / ``ssebridge.toml``, ``proxy``,
which send the client's address in X-Forwarded-For; waitress drops that header unless told to trust
the bridge)::

    waitress-serve --listen 127.0.0.1:5000 --trusted-proxy 127.0.0.1 \\
        --trusted-proxy-headers "x-forwarded-for x-forwarded-proto x-forwarded-host" app:app

or in-process (``wsgi-file = app.py``). Then publish to a user's channel::

    redis-cli PUBLISH user-alice 'hello alice'

The users and tokens below are demo values; ``FLASK_AUTH_TOKENS="token1:alice,token2:bob"`` and
``FLASK_SECRET_KEY`` replace them.
"""

from __future__ import annotations

import hmac
import os
import re
import secrets

from flask import Flask, Response, jsonify, request, session

app = Flask(__name__)
# A fresh key per start logs everyone out on restart: set FLASK_SECRET_KEY to keep sessions.
app.secret_key = os.environ.get("FLASK_SECRET_KEY") or secrets.token_hex(32)
app.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax")

#: Demo credentials for the login form.
USERS = {"alice": "wonderland", "bob": "builder"}


def _tokens() -> dict[str, str]:
    configured = os.environ.get("FLASK_AUTH_TOKENS")
    if not configured:
        return {"alice-token": "alice", "bob-token": "bob"}
    pairs = (item.split(":", 1) for item in configured.split(",") if ":" in item)
    return {token.strip(): name.strip() for token, name in pairs}


TOKENS = _tokens()
#: A user name must make a safe channel name.
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def _bearer_user() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return None
    user = None
    for known, name in TOKENS.items():
        # compare_digest on every token: how long the check takes says nothing about the token.
        if hmac.compare_digest(known.encode(), token.strip().encode()):
            user = name
    return user


def current_user() -> str | None:
    """The session's user, else the bearer token's, else ``None``."""
    user = session.get("user")
    if isinstance(user, str):
        return user
    return _bearer_user()


@app.post("/login")
def login() -> tuple[Response, int] | Response:
    name = request.form.get("user", "")
    password = request.form.get("password", "")
    expected = USERS.get(name)
    if expected is None or not hmac.compare_digest(expected.encode(), password.encode()):
        return jsonify(error="bad credentials"), 401
    session["user"] = name
    return jsonify(user=name)


@app.post("/logout")
def logout() -> Response:
    session.pop("user", None)
    return jsonify(user=None)


@app.get("/events")
def events() -> Response | tuple[Response, int, dict[str, str]]:
    user = current_user()
    if user is None or not _NAME.fullmatch(user):
        body = jsonify(error="unauthorized", detail="log in, or send Authorization: Bearer <token>")
        return body, 401, {"WWW-Authenticate": 'Bearer realm="events"'}
    response = Response(b"", status=200, content_type="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    # The hand-over: the bridge streams channel user-<name> on this connection.
    response.headers["X-SSE-Offload"] = f"user-{user}"
    return response


@app.get("/whoami")
def whoami() -> Response:
    """Who the app takes the client to be: its address is the browser's only when the bridge sends
    X-Forwarded-For (``forwarded = true``) and waitress trusts it (``--trusted-proxy``); otherwise it
    is the bridge's own."""
    return jsonify(client=request.remote_addr, user=current_user())


@app.get("/")
def index() -> Response:
    page = """<!doctype html>
<meta charset="utf-8"><title>ssebridge: Flask auth</title>
<form method="post" action="/login"><input name="user" placeholder="alice">
<input name="password" type="password" placeholder="wonderland"><button>log in</button></form>
<pre id="log"></pre>
<script>
  var log = document.getElementById('log');
  var source = new EventSource('/events');
  source.onmessage = function (e) { log.textContent += e.data + '\\n'; };
  source.onerror = function () { log.textContent += '(not connected: log in first)\\n'; };
</script>
"""
    return Response(page, content_type="text/html; charset=utf-8")


#: For ``wsgi-file = app.py`` (uWSGI's name for the callable).
application = app
