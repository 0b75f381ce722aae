"""The seed's Django ``sse_view`` in a single-file Django project.

The view answers an empty ``event/stream`` response naming its channel in ``X-SSE-Channel``; the
bridge's ``collect-header`` / ``pull-header`` rules (``ssebridge.ini``) map both headers to variables
and ``final-route-if`` turns the connection into a stream on that channel. ``pull-header`` keeps
``X-SSE-Channel`` away from the client. The view is the seed's, verbatim: it streams the channel
``foobar`` whatever the URL says.

    python -m ssebridge ... with ssebridge.ini   (wsgi-file = app.py)
    redis-cli PUBLISH foobar hello
"""

from __future__ import annotations

from django.conf import settings

if not settings.configured:
    settings.configure(
        DEBUG=False,
        ROOT_URLCONF=__name__,
        ALLOWED_HOSTS=["*"],
        # No sessions, no CSRF, no database: nothing here needs the key to be secret.
        SECRET_KEY="ssebridge-example-not-secret",
        INSTALLED_APPS=[],
        MIDDLEWARE=[],
        DATABASES={},
    )

from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.http import HttpRequest, HttpResponse  # noqa: E402
from django.urls import path  # noqa: E402


def sse_view(request: HttpRequest, foobar: str) -> HttpResponse:
    response = HttpResponse('', content_type='event/stream')
    response['Cache-Control'] = 'no-cache'
    response['X-SSE-Channel'] = 'foobar'
    return response


def index(request: HttpRequest) -> HttpResponse:
    return HttpResponse("Hello from Django\n", content_type="text/plain")


urlpatterns = [
    path("events/<str:foobar>", sse_view),
    path("", index),
]

application = get_wsgi_application()
