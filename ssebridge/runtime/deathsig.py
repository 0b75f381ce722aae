"""Children that die with their parent, even when the parent is killed with SIGKILL.

Linux's ``prctl(PR_SET_PDEATHSIG)`` asks the kernel to signal a process when its parent dies; it is
kept across ``exec``. A worker sets it on itself (``die_with_parent``, it is our own Python). A mule
is any program, so it is started through this file run as a script (``launcher``): the script sets
the signal, checks the parent did not die meanwhile, and ``exec``s the mule in its own process, so
the mule's pid is the one its supervisor spawned. Without it a killed parent leaves its mule
publishing, and the parent's successor starts a second one.

Standard library only, and run with ``python -I -S``: the launcher must work whatever the mule's
environment says (``PYTHONPATH``, a virtualenv without ssebridge), and costs a few milliseconds.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Sequence

__all__ = ["PR_SET_PDEATHSIG", "die_with_parent", "launcher"]

#: prctl(2) option: the signal a process gets when its parent dies.
PR_SET_PDEATHSIG = 1
#: Exit status of the launcher when the program cannot be executed (as a shell says it).
EXIT_CANNOT_EXEC = 127


def die_with_parent(parent: int, signum: int = signal.SIGTERM) -> bool:
    """Get ``signum`` when process ``parent`` (ours) dies; return whether the kernel will send it.

    The parent may have died before the request took effect: then the signal is sent at once.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signum)) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() != parent:
        os.kill(os.getpid(), signum)
    return True


def launcher(executable: str, argv: Sequence[str]) -> tuple[str, list[str]]:
    """The executable and argv that run ``argv`` (with ``executable``) as a child that dies with us.

    Off Linux there is no such request: the program is run as it is.
    """
    if not sys.platform.startswith("linux"):
        return executable, list(argv)
    return sys.executable, [
        sys.executable,
        "-I",
        "-S",
        os.path.abspath(__file__),
        str(os.getpid()),
        executable,
        *argv,
    ]


def main(args: Sequence[str]) -> int:
    """``deathsig.py PARENT EXECUTABLE ARGV0 [ARGS...]``: die with PARENT, then become the program."""
    parent, executable, *argv = args
    die_with_parent(int(parent))
    try:
        os.execv(executable, argv)
    except OSError as e:
        sys.stderr.write(f"ssebridge: cannot run {executable!r}: {e.strerror or e}\n")
    return EXIT_CANNOT_EXEC


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
