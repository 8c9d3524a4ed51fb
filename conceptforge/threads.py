"""How many CPU threads torch uses, chosen from the cores this process may use.

torch's default thread pool takes every core and spins while it waits, so on a
machine that is busy with something else a learn run can take ten times as
long (320 s instead of 23 s for the example project with one core taken).
conceptforge therefore uses the cores it may run on (`os.sched_getaffinity`)
less the ones other processes keep busy (the 1-minute load average), at least
one, and makes OpenMP threads wait passively instead of spinning.
`--threads N` or CONCEPTFORGE_THREADS=N chooses the number instead.
"""

from __future__ import annotations

import os
import sys

ENV = "CONCEPTFORGE_THREADS"


def available_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def idle_cores(cores: int | None = None, load: float | None = None) -> int:
    """Cores not kept busy by other processes: cores minus the load average, at least 1."""
    cores = available_cores() if cores is None else cores
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            load = 0.0
    return max(1, min(cores, int(cores - load + 0.5)))


def choose_threads(requested: int | None = None, environ: dict[str, str] | None = None) -> int:
    """--threads, else CONCEPTFORGE_THREADS, else the idle cores."""
    from .errors import InputError

    environ = os.environ if environ is None else environ
    if requested is None and environ.get(ENV, "").strip():
        try:
            requested = int(environ[ENV])
        except ValueError:
            raise InputError(f"{ENV} must be a whole number of threads, not {environ[ENV]!r}.") from None
    if requested is not None:
        if requested < 1:
            raise InputError(f"The number of threads must be at least 1, not {requested}.")
        return requested
    return idle_cores()


def configure_threads(requested: int | None = None) -> int:
    """Set torch's (and OpenMP's) thread count and passive waiting; return the count.

    Before torch is imported the environment decides (OMP_NUM_THREADS,
    OMP_WAIT_POLICY); after, torch.set_num_threads does.  A thread count the
    user set in OMP_NUM_THREADS is kept unless --threads or CONCEPTFORGE_THREADS says otherwise.
    """
    explicit = requested is not None or os.environ.get(ENV, "").strip()
    if not explicit and os.environ.get("OMP_NUM_THREADS", "").strip().isdigit():
        n = int(os.environ["OMP_NUM_THREADS"])
    else:
        n = choose_threads(requested)
    os.environ["OMP_NUM_THREADS"] = str(n)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("KMP_BLOCKTIME", "0")
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
    return n
