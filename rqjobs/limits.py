"""Soft and hard time limits of a job, enforced in its work horse with SIGALRM.

At the soft limit (`SOFT_TIME_LIMIT` for a job with the default `JOB_TIMEOUT`, the same fraction of a job's own
timeout otherwise) the job gets a catchable `SoftTimeLimitExceeded` and a chance to clean up. At the hard limit the
work horse is killed with SIGKILL, together with every process group it started (git clones run in their own), so
nothing is left running. A job run in its worker's own process (`rqjobs worker --in-process`) gets
`HardTimeLimitExceeded` at the hard limit instead, and its worker is killed if the job still runs a little later.
Outside a job (a worker's own callbacks and waits) rq's usual timeouts apply.

A SIGKILLed worker leaves nothing running either: its work horse, and the git processes the horse started, get the
kernel's parent-death signal when their parent dies.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable

from rq.timeouts import JobTimeoutException, UnixSignalDeathPenalty

from rqjobs.exceptions import HardTimeLimitExceeded, JobStoppedOnRequest, SoftTimeLimitExceeded
from rqjobs.settings import get_settings

logger = logging.getLogger(__name__)

# Set in the work horse right after the fork: only there may a limit kill the process.
in_work_horse = False
# Set by a worker that runs jobs in its own process (`rqjobs worker --in-process`): the next job's limits start
# `watch()`, a context that keeps the job's heartbeat while it runs (`worker.JobsInProcessWorker`).
watch: Callable[[], contextlib.AbstractContextManager] | None = None
# Process groups a job started (git clones): killed with the work horse at the hard limit.
child_groups: set[int] = set()
# Set by `request_stop`: the job in this process's main thread is to stop at its next Python step.
_stop_requested = False


def soft_limit_for(timeout: float) -> float:
    """Return the soft limit of a job with this hard limit."""
    settings = get_settings()
    if timeout == settings.job_timeout:
        return float(settings.soft_time_limit)
    return max(0.5, timeout * settings.soft_time_limit / settings.job_timeout)


_PR_SET_PDEATHSIG = 1


@functools.cache
def _prctl():
    """Return libc's prctl(2), or None where there is none (not Linux)."""
    if not sys.platform.startswith('linux'):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


def prepare() -> None:
    """Look prctl(2) up now, in a worker, so that each work horse it forks has it at hand (0.8 ms per horse)."""
    _prctl()


def die_with_parent(parent_pid: int, sig: int = signal.SIGKILL) -> None:
    """Have the kernel send `sig` to this process when its parent, `parent_pid`, dies (Linux; elsewhere nothing)."""
    prctl = _prctl()
    if prctl is None:
        return
    prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    # A parent that died before the call was made sends nothing: act on it now.
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), sig)


def parent_death_signal(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """Return a `preexec_fn` that gives a child `sig` when this process dies; None where that is not possible."""
    if _prctl() is None:
        return None
    return functools.partial(die_with_parent, os.getpid(), sig)


def request_stop() -> None:
    """Stop the job that runs under its limits in this process's main thread (an in-process worker's).

    Only while that job's limits stand (`TimeLimits`), whose handler turns the signal into `JobStoppedOnRequest`.
    """
    global _stop_requested
    _stop_requested = True
    signal.pthread_kill(threading.main_thread().ident, signal.SIGALRM)


def disarm() -> None:
    """Cancel any limit still set in this process: its timer and its handler."""
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, signal.SIG_DFL)


def kill_work_horse() -> None:
    """Kill the process groups the job started, then the work horse's own group (the horse itself)."""
    for group in list(child_groups):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)
    os.killpg(os.getpgrp(), signal.SIGKILL)


class TimeLimits(UnixSignalDeathPenalty):
    """rq's death penalty, with a soft limit before the hard one for jobs in a work horse or an in-process worker."""

    def __init__(self, timeout, exception=JobTimeoutException, **kwargs):
        global watch
        super().__init__(timeout, exception, **kwargs)
        in_job = in_work_horse or watch is not None
        self._limited = in_job and exception is JobTimeoutException and timeout is not None and timeout > 0
        self._soft_fired = False
        self._watch, self._watching = None, None
        # Whether a stop request may still stop the job: not once its limits are being taken down.
        self._stoppable = False
        if self._limited and watch is not None:
            # Taken by the job's own limits: the callbacks rq runs after it get rq's usual ones.
            self._watch, watch = watch, None

    def setup_death_penalty(self) -> None:
        global _stop_requested
        if not self._limited:
            return super().setup_death_penalty()
        _stop_requested = False
        # The handler first: a stop request may come as soon as the job is watched.
        signal.signal(signal.SIGALRM, self._alarm)
        if self._watch is not None:
            self._stoppable = True
            self._watching = self._watch()
            self._watching.__enter__()
        signal.setitimer(signal.ITIMER_REAL, soft_limit_for(self._timeout))

    def cancel_death_penalty(self) -> None:
        if not self._limited:
            return super().cancel_death_penalty()
        self._stoppable = False
        if self._watching is not None:
            # First, so that no stop request (sent only while the job is watched) finds the handler gone.
            watching, self._watching = self._watching, None
            watching.__exit__(None, None, None)
            # The next job's hard limit is its own: the groups this one started are not.
            child_groups.clear()
        disarm()

    def _alarm(self, signum, frame) -> None:
        global _stop_requested
        if _stop_requested:
            _stop_requested = False
            if self._stoppable:
                raise JobStoppedOnRequest('stopped on request (rqjobs job stop)')
            return  # the job has ended meanwhile
        soft = soft_limit_for(self._timeout)
        if not self._soft_fired:
            self._soft_fired = True
            signal.setitimer(signal.ITIMER_REAL, max(0.1, self._timeout - soft))
            raise SoftTimeLimitExceeded(
                f'time limit: the job ran past its soft limit of {soft:g} s '
                f'(SOFT_TIME_LIMIT); it is killed at {self._timeout:g} s (JOB_TIMEOUT)'
            )
        if in_work_horse:
            logger.error('job ran past its hard limit of %s s (JOB_TIMEOUT): killing the work horse', self._timeout)
            kill_work_horse()
        # In the worker's own process: what the job started is killed, and the job is stopped where it stands. A job
        # that goes on regardless (it swallowed the exception, or sits in C code) is for the watch to end.
        for group in list(child_groups):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)
        raise HardTimeLimitExceeded(
            f'time limit: the job ran past its hard limit of {self._timeout:g} s (JOB_TIMEOUT) and was stopped'
        )
