"""How many CPU threads torch's intra-op pool uses: one rule for every entry point.

The rule (:func:`choose_threads`), first match wins:

1. an explicit ``setting`` (a positive int, e.g. a ``--threads`` flag);
2. ``OMP_NUM_THREADS`` from the environment, if set to a positive integer (its first entry when it
   is a list such as ``"4,2"``); an unparsable value is ignored;
3. the cores actually free to this process: the cores it may run on (``os.sched_getaffinity``;
   ``os.cpu_count()`` where that does not exist) less the machine's busy cores (the 1-minute load
   average, over all of the machine's ``os.cpu_count()`` cores: ``cpu_count − load``, a core counting
   as free when more than half idle), at most the cores it may run on, at least 1.

:func:`apply_thread_policy` applies it: it subtracts ``num_workers`` (DataLoader workers, each one
busy core: torch gives every worker one intra-op thread) from the automatic choice only (an
explicit setting or ``OMP_NUM_THREADS`` is taken as it is), calls ``torch.set_num_threads`` and
returns the count.

The OpenMP wait policy (:func:`prefer_passive_waiting`): ``OMP_WAIT_POLICY=PASSIVE`` (idle
OpenMP threads sleep at once instead of spinning a while) is set, when unset, only where this
process will run more threads than there are free cores; otherwise the runtime's default (spin
briefly, then sleep) stays. Measured on the project's 2-core machine (docs/benchmarks.md, the
``make demo`` step in Lightning, ``bench/demo_step.py``): with a core per thread, passive waiting
makes 2 threads slower than 1 (70.3 against 65.5 ms per step; 42.7 ms with the default); beside a
busy process, 2 threads take 118 ms passive and 191 ms with the default, 1 thread 66 ms. The
automatic choice (rule 3) never oversubscribes at start-up, so the policy matters when
``OMP_NUM_THREADS`` or ``--threads`` asks for more threads than the free cores. Honestly: the OpenMP runtime reads ``OMP_WAIT_POLICY``
once, when it is loaded (libgomp, which torch's Linux wheels use, does so while ``import torch``
runs), so the setting reaches this process only if it is made before anything imports torch
(entry points call :func:`prefer_passive_waiting` first; this module imports torch only inside
:func:`apply_thread_policy`), or else only the processes started afterwards (spawned DataLoader
workers, subprocesses; forked workers share the parent's runtime). Set it in the shell to be sure.

The load average is a machine-wide, lagging figure (the last minute; in a container, often the
host's), and it counts this process's own recent work: call the functions at start-up, before heavy
work, as entry points do.
"""
from __future__ import annotations

import os
from typing import Optional

__all__ = ["apply_thread_policy", "choose_threads", "free_cores", "prefer_passive_waiting", "threads_argument"]


def _usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no sched_getaffinity (macOS, Windows)
        return max(1, os.cpu_count() or 1)


def _load_average() -> float:
    """The 1-minute load average, 0 where the platform has none."""
    try:
        return max(0.0, float(os.getloadavg()[0]))
    except (AttributeError, OSError):  # Windows, or unavailable
        return 0.0


def free_cores() -> int:
    """Cores free to this process now: ``min(usable, round(cpu_count − load1))``, at least 1 (the
    module docstring's rule 3)."""
    usable = _usable_cores()
    machine = max(usable, os.cpu_count() or usable)
    idle = int(machine - _load_average() + 0.5)  # a core more than half idle counts as free
    return max(1, min(usable, idle))


def _omp_num_threads() -> Optional[int]:
    """``OMP_NUM_THREADS`` as a positive int (first entry of a list), None if unset or unparsable."""
    value = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    try:
        threads = int(value)
    except ValueError:
        return None
    return threads if threads >= 1 else None


def _explicit(setting) -> Optional[int]:
    if setting is None:
        return None
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
        raise ValueError(f"threads must be a positive integer or None (automatic), got {setting!r}")
    return setting


def choose_threads(setting: Optional[int] = None) -> int:
    """Intra-op threads by the module's rule: ``setting`` if given, else ``OMP_NUM_THREADS`` if set,
    else the cores free to this process (affinity less the 1-minute load average), at least 1.

    Raises ``ValueError`` for a ``setting`` that is not a positive integer.
    """
    explicit = _explicit(setting)
    if explicit is not None:
        return explicit
    from_env = _omp_num_threads()
    if from_env is not None:
        return from_env
    return free_cores()


def threads_argument(argv) -> Optional[int]:
    """The positive integer of a ``--threads N`` / ``--threads=N`` among command-line ``argv``
    (the last one given), else None: what an entry point passes to :func:`prefer_passive_waiting`
    before its parser (and torch) run; a bad value is left to the parser's error."""
    argv, value = [str(a) for a in argv], None
    for position, argument in enumerate(argv):
        if argument == "--threads" and position + 1 < len(argv):
            value = argv[position + 1]
        elif argument.startswith("--threads="):
            value = argument.split("=", 1)[1]
    try:
        return _explicit(int(value)) if value is not None else None
    except ValueError:
        return None


def prefer_passive_waiting(setting: Optional[int] = None) -> bool:
    """``OMP_WAIT_POLICY=PASSIVE`` if unset and :func:`choose_threads` (``setting``) exceeds the
    free cores (module docstring); entry points call it before they import torch. Returns whether
    the environment now asks for passive waiting."""
    if "OMP_WAIT_POLICY" not in os.environ and choose_threads(setting) > free_cores():
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE"


def apply_thread_policy(setting: Optional[int] = None, num_workers: int = 0) -> int:
    """:func:`prefer_passive_waiting` (the module docstring says when it takes effect), then
    ``torch.set_num_threads`` to :func:`choose_threads` (``setting`` or ``OMP_NUM_THREADS`` as
    given; the automatic choice less ``num_workers`` DataLoader workers, at least 1); returns the count.
    """
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    prefer_passive_waiting(setting)  # before torch loads OpenMP, if it has not yet
    threads = choose_threads(setting)
    if _explicit(setting) is None and _omp_num_threads() is None:
        threads = max(1, threads - num_workers)
    import torch

    torch.set_num_threads(threads)
    return threads
