"""A WSGI app for the app-governed tests: each path answers one of the seed's hand-over styles."""

import uwsgi


def application(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/whattimeisit":  # the seed's add_var clock
        uwsgi.add_var("X-SSE-OFFLOAD", "clock")
        return []
    if path == "/headers":  # the seed's "smart headers" example
        uwsgi.add_var("X-SSE-OFFLOAD", "clock")
        headers = [("Content-Type", "event/stream"), ("Cache-Control", "no-cache"), ("Foo", "Bar")]
        start_response("200 OK", headers)
        return []
    if path == "/collected":  # collect-header + pull-header
        start_response("200 OK", [("Content-Type", "event/stream"), ("X-SSE-Channel", "foobar")])
        return [b"this body is dropped"]
    if path == "/native":  # no rule needed
        start_response("200 OK", [("X-SSE-Offload", "native"), ("Set-Cookie", "seen=1")])
        return []
    if path == "/nocontent":  # a 204 cannot carry a stream: it becomes a 200
        start_response("204 No Content", [("X-SSE-Offload", "native")])
        return []
    if path == "/hostile":
        start_response("200 OK", [("X-SSE-Offload", "bad\tname" + "x" * 300)])
        return []
    if path == "/boom":
        raise RuntimeError("the app broke")
    if path == "/slow":
        import time

        time.sleep(3)
    if path == "/echo":
        body = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [environ["REQUEST_METHOD"].encode(), b" ", body]
    start_response("403 Forbidden", [("Content-Type", "text/plain")])
    return [b"no"]
