"""One live run per ``OUTPUT_DIR``: a lock file with the holder's pid and host.

Two trainings writing into the same ``OUTPUT_DIR`` interleave ``metrics.json`` and
leave a ``config.yaml`` and ``model_final.pth`` from different runs. ``tools/train_net.py``
therefore holds :class:`OutputDirLock` for the whole run:

- the lock is ``OUTPUT_DIR/solo_d2.lock``, a small JSON file (pid, host, process start
  time, start date, command line), created atomically (it never exists half-written);
- a second run on a directory whose holder is alive is refused with
  :class:`OutputDirLockedError`, naming the holder (also with ``--resume``: resume a run
  after it has finished or died, never while it is running);
- a lock whose holder is dead (same host, pid gone or reused by another process) is
  stale and taken over with a warning. A lock held by another host cannot be checked
  and is refused; the message says which file to delete when that run is known gone;
- the lock is released on exit, also when training raises; a process killed with
  SIGKILL leaves a stale lock, which the next run takes over.

Only the launching process takes it (the process that runs ``launch`` on machine rank 0;
worker processes never do), so it is held exactly as long as the whole job runs.
"""

import json
import logging
import os
import socket
import sys
import time
import uuid

__all__ = ["OutputDirLock", "OutputDirLockedError", "LOCK_NAME"]

LOCK_NAME = "solo_d2.lock"
logger = logging.getLogger(__name__)


class OutputDirLockedError(RuntimeError):
    """Another live run holds the ``OUTPUT_DIR``."""


def _process_start(pid: int):
    """Start time of ``pid`` in clock ticks since boot (Linux), or None where unknown.

    Together with the pid it identifies a process: a recycled pid has another start time.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    try:  # the command name (field 2) may contain spaces; fields after ')' are fixed
        return int(stat[stat.rindex(")") + 2 :].split()[19])
    except (ValueError, IndexError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


class OutputDirLock:
    """Context manager holding ``<output_dir>/solo_d2.lock``.

    Args:
        output_dir: the run's ``OUTPUT_DIR`` (created if missing).
        what: a short description of the run stored in the lock (default: the command line).
    """

    def __init__(self, output_dir: str, what: str = None):
        self.output_dir = os.path.abspath(output_dir)
        self.path = os.path.join(self.output_dir, LOCK_NAME)
        self.what = what if what is not None else " ".join(sys.argv)
        self._token = None

    # ------------------------------------------------------------------ info
    def _record(self):
        pid = os.getpid()
        return {
            "pid": pid,
            "host": socket.gethostname(),
            "pid_start": _process_start(pid),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": self.what,
            "token": self._token,
        }

    def read_holder(self):
        """The lock's JSON record, ``{}`` for an unreadable one, None when there is no lock."""
        try:
            with open(self.path) as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    def _stale_reason(self, holder):
        """Why ``holder`` (a lock record) is stale, or None when it may be alive."""
        if not holder:
            # written atomically, so an unreadable lock is corrupt, not half-written
            return "the lock file is unreadable"
        if holder.get("host") != socket.gethostname():
            return None  # cannot check a process on another host
        pid = holder.get("pid")
        if not isinstance(pid, int):
            return "the lock file names no pid"
        if not _pid_alive(pid):
            return f"process {pid} is gone"
        start = holder.get("pid_start")
        if start is not None and _process_start(pid) not in (None, start):
            return f"pid {pid} now belongs to another process"
        return None

    # ------------------------------------------------------------------ acquire / release
    def acquire(self):
        os.makedirs(self.output_dir, exist_ok=True)
        self._token = uuid.uuid4().hex
        tmp = os.path.join(self.output_dir, f".{LOCK_NAME}.{self._token}.tmp")
        with open(tmp, "w") as f:
            json.dump(self._record(), f)
        try:
            for _ in range(10):
                try:
                    os.link(tmp, self.path)  # atomic, fails if the lock exists
                    return self
                except FileExistsError:
                    pass
                holder = self.read_holder()
                if holder is None:
                    continue  # released meanwhile
                reason = self._stale_reason(holder)
                if reason is None:
                    self._token = None
                    raise OutputDirLockedError(self._message(holder))
                logger.warning("Taking over the stale lock %s (%s): %s", self.path, reason, holder)
                # move it aside atomically: of several processes taking over, one wins
                aside = f"{self.path}.stale-{uuid.uuid4().hex}"
                try:
                    os.rename(self.path, aside)
                    os.remove(aside)
                except OSError:
                    time.sleep(0.05)
            self._token = None
            raise OutputDirLockedError(
                f"Could not take the lock {self.path} (contended); try again"
            )
        finally:
            os.remove(tmp)

    def _message(self, holder):
        return (
            "OUTPUT_DIR {} is in use by another run: pid {} on host {} (started {}, command: {}). "
            "Two runs in one OUTPUT_DIR would mix their metrics.json, config.yaml and checkpoints. "
            "Wait for it to finish, or choose another OUTPUT_DIR. If that run is known to be gone "
            "(e.g. it ran on another host), delete {}.".format(
                self.output_dir,
                holder.get("pid"),
                holder.get("host"),
                holder.get("started"),
                holder.get("command"),
                self.path,
            )
        )

    def release(self):
        """Remove the lock if this object still holds it (never someone else's lock)."""
        if self._token is None:
            return
        holder = self.read_holder()
        if holder and holder.get("token") == self._token:
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass
        self._token = None

    @property
    def held(self) -> bool:
        return self._token is not None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False
