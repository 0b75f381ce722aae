# The seed's app-governed clock (uwsgi-sse-offload README), verbatim but for a bytes body (Python 3).
import uwsgi


def application(environ, start_response):
    if environ['PATH_INFO'] == '/whattimeisit':
        uwsgi.add_var('X-SSE-OFFLOAD', 'clock')
        return []
    else:
        start_response('200 OK', [('Content-Type', 'text/plain')])
        return [b'Hello World']
