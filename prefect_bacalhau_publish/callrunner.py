"""Child-process side of a callable job: `python -m prefect_bacalhau_publish.callrunner PAYLOAD`.

Never imported by the package, so `-m` runs it cleanly. The payload (written by `jobs.pack_callable`) holds the
parent's `sys.path`, then the cloudpickled callable. The child runs in the job's working folder with the job's
env; what the callable prints is the job's stdout/stderr. Exit code: an int the callable returns, `sys.exit`'s
code, 1 with the traceback on stderr if it raises, else 0.
"""

from __future__ import annotations

import pickle
import sys
import traceback
from pathlib import Path

__all__ = ["main"]


def _exit_code(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def main(payload: str) -> int:
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    with open(payload, "rb") as handle:
        sys.path[:] = pickle.load(handle)
        try:
            func = pickle.load(handle)
        except Exception:
            traceback.print_exc()
            print("the job's callable could not be loaded in its process", file=sys.stderr)
            return 1
    try:
        return _exit_code(func(Path.cwd()))
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    except BaseException:
        traceback.print_exc()
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
