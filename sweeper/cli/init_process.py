"""``sweeper`` as the first process of a container (PID 1): an init that reaps orphans.

``docker run IMAGE sweeper agent SWEEP_ID`` makes the agent PID 1, and every process whose
parent dies is handed to PID 1. A trial's workers that outlive it (a data loader, a torchrun
worker the agent killed at the trial's end) would then stay as zombies of the agent: never
reaped, each holding a process id, and keeping the trial's process group alive in the agent's
eyes, so every stop waited out its whole grace period.

So as PID 1 the command forks: the child carries on as the command, in a process group of its
own, and the parent stays behind as a minimal init (as ``docker run --init`` would provide). It
reaps every process handed to it, passes on the signals meant for the command (``docker stop``'s
SIGTERM, Ctrl-C of ``docker run -it``), and exits with the command's exit code. Signals stay
blocked in the parent and are taken with ``sigwaitinfo``, so none is lost between two waits.
``SWEEPER_INIT=0`` turns this off.
"""

from __future__ import annotations

import os
import signal
from typing import NoReturn

_PASSED_ON = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGWINCH,
)


def become_init_if_pid1() -> None:
    """Returns at once unless this process is PID 1; then returns in the forked command process."""
    if os.getpid() != 1 or os.environ.get("SWEEPER_INIT") == "0":
        return
    watched = {*_PASSED_ON, signal.SIGCHLD}
    # Blocked before the fork, so a signal that arrives meanwhile waits for the parent's sigwaitinfo.
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    command = os.fork()
    if command == 0:
        os.setpgid(0, 0)  # a terminal's Ctrl-C reaches the init alone, which passes it on once
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        return
    try:
        os.setpgid(command, command)  # also here: whichever side runs first, the group exists
    except OSError:  # the child did it already, or has exited
        pass
    _reap_and_pass_on(command, watched)


def _reap_and_pass_on(command: int, watched: set[signal.Signals]) -> NoReturn:
    while True:
        info = signal.sigwaitinfo(watched)
        if info.si_signo != signal.SIGCHLD:
            try:
                os.kill(command, info.si_signo)
            except ProcessLookupError:
                pass
            continue
        while True:  # one SIGCHLD may stand for several children that ended
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                os._exit(0)
            if pid == 0:
                break
            if pid == command:
                code = os.waitstatus_to_exitcode(status)
                os._exit(code if code >= 0 else 128 - code)
