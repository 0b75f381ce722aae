"""Running it: listeners, the service, the worker pool, mules, the command line, systemd notices.

Owns, in import order: ``sdnotify``, ``backoff``, ``deathsig`` (children that die with their parent),
``lifecycle`` (exit statuses, the open-files limit, leaving, ``StartError``), ``listeners`` (sockets
from endpoint strings, shared by a pool), ``handoff`` (listening sockets passed to a new process),
``mules``, ``service`` (wires hub, transports, router and listeners), ``worker`` (one process of a
pool), ``pool`` (``workers = N``, and its rolling reload), ``control`` (SIGHUP reload, SIGUSR2
upgrade), ``cli`` (twistd's options into a service). May import anything below it; nothing imports
the runtime but the twistd plugin and the package facade.
"""
