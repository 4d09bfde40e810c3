"""Sync task names that hand over to their async twins in async code, as prefect-aws's tasks do with Prefect's
`async_dispatch`, while staying Prefect Tasks: `.submit`, `.map`, `.fn` and `.with_options` keep working.

Called from an async flow or task (or with an event loop running and no run at all), `run_job(...)` returns
the awaitable of `arun_job(...)`; `_sync=True` forces the sync run.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from prefect import Task
from prefect._internal.compatibility.async_dispatch import is_in_async_context

__all__ = ["DispatchingTask", "dispatching"]

P = ParamSpec("P")
R = TypeVar("R")


class DispatchingTask(Task[P, R]):
    """A Task whose call, in async code, is its async twin's call (`twin` names `module:attribute`)."""

    twin: str = ""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        forced = kwargs.pop("_sync", None)
        if self.twin and forced is not True and (forced is False or is_in_async_context()):
            module, _, name = self.twin.partition(":")
            return getattr(importlib.import_module(module), name)(*args, **kwargs)
        return super().__call__(*args, **kwargs)

    def with_options(self, *args: Any, **kwargs: Any) -> Any:
        new: Any = super().with_options(*args, **kwargs)
        new.__class__ = type(self)
        new.twin = self.twin
        return new


def dispatching(twin: str, **options: Any) -> Callable[[Callable[P, R]], DispatchingTask[P, R]]:
    """`@task(**options)` for a sync function whose async twin is `twin` (`module:attribute`)."""

    def decorate(fn: Callable[P, R]) -> DispatchingTask[P, R]:
        made: DispatchingTask[P, R] = DispatchingTask(fn=fn, **options)
        made.twin = twin
        return made

    return decorate
