"""One event loop per process, on a daemon thread, where every teacher request runs.

The teacher's I/O is async (one connection pool, one limiter, many requests in flight), while the
stages call it from plain synchronous code and worker threads. :func:`run_sync` bridges the two: it
runs a coroutine on the shared loop, in a copy of the caller's context (so Prefect's run context is
visible to it), and blocks the calling thread until it finishes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_LOCK = threading.Lock()
_STATE: dict[str, Any] = {}


def _loop() -> tuple[asyncio.AbstractEventLoop, threading.Thread]:
    with _LOCK:
        # After a fork the thread is gone; the child starts its own loop.
        if _STATE.get("pid") != os.getpid() or not _STATE["thread"].is_alive():
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="distillery-teacher-io", daemon=True)
            thread.start()
            _STATE.update(pid=os.getpid(), loop=loop, thread=thread)
        return _STATE["loop"], _STATE["thread"]


def teacher_loop() -> asyncio.AbstractEventLoop:
    """The event loop the teacher's requests run on in this process (started on first use)."""
    return _loop()[0]


def in_teacher_loop() -> bool:
    return _STATE.get("thread") is threading.current_thread()


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on the teacher's loop and wait for it; interrupting the caller cancels it."""
    loop, thread = _loop()
    if threading.current_thread() is thread:
        coro.close()
        raise RuntimeError("a blocking teacher call from inside the teacher's event loop; await the async method")
    context = contextvars.copy_context()
    done: concurrent.futures.Future[T] = concurrent.futures.Future()
    holder: dict[str, asyncio.Task[T]] = {}

    def start() -> None:
        if not done.set_running_or_notify_cancel():
            coro.close()
            return
        task = loop.create_task(coro, context=context)
        holder["task"] = task

        def finish(t: asyncio.Task[T]) -> None:
            if t.cancelled():
                done.set_exception(concurrent.futures.CancelledError())
            elif t.exception() is not None:
                done.set_exception(t.exception())  # type: ignore[arg-type]
            else:
                done.set_result(t.result())

        task.add_done_callback(finish)

    loop.call_soon_threadsafe(start)
    try:
        return done.result()
    except BaseException:
        if not done.done():
            task = holder.get("task")
            if task is not None:
                loop.call_soon_threadsafe(task.cancel)
        raise
