"""Running it: listeners, the service, the worker pool, mules, the command line, systemd notices.

Owns: ``service`` (wires hub, transports, router and listeners), ``pool``/``worker`` (``workers = N``),
``mules``, ``cli`` (twistd's options into a service), ``sdnotify``. May import anything below it; nothing
imports the runtime but the twistd plugin and the package facade.
"""
