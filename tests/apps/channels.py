"""A WSGI app for the channel-name tests: hands over channels built every way an app can."""

from urllib.parse import unquote_to_bytes

import uwsgi

from ssebridge.publish import offload_header


def application(environ, start_response):
    path = environ["PATH_INFO"]
    # The name to use: ?name=user-Zo%C3%A9 (UTF-8 text), or ?c=... (exact bytes, for /raw)
    raw = unquote_to_bytes(environ.get("QUERY_STRING", "").partition("=")[2])
    if path == "/raw":  # a header carrying these exact bytes (latin-1 code points)
        start_response("200 OK", [("X-Chan", raw.decode("latin-1"))])
        return []
    name = raw.decode("utf-8")
    if path == "/helper":  # the documented way: UTF-8 carried PEP 3333 style
        start_response("200 OK", [offload_header(name)])
        return []
    if path == "/naive":  # a str header with non-latin-1-safe meaning: latin-1 bytes on the wire
        start_response("200 OK", [("X-SSE-Offload", name)])
        return []
    if path == "/add_var":  # uwsgi.add_var takes real text
        uwsgi.add_var("X-SSE-OFFLOAD", name)
        start_response("200 OK", [])
        return []
    start_response("404 Not Found", [])
    return []
