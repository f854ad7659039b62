"""The threads that run whole requests (server.task) for the loop, and the way back: a thread
puts its reply on a queue and wakes the loop through a pipe the loop's selector watches. A
thread never touches a client's socket.

Threads start as the load needs them (each thread that allocates gets a malloc arena of its
own): as many as requests ever ran at once, up to gunicorn's `threads`."""
from __future__ import annotations

import os
import queue
import threading
from typing import Callable, Generic, TypeVar

Job = TypeVar("Job")
Done = TypeVar("Done")


class Pool(Generic[Job, Done]):
    def __init__(self, size: int, work: Callable[[Job], Done]):
        self.size = max(1, size)
        self.busy = 0
        self._work = work
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[tuple[Job, Done]] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self.waker, self._wake = os.pipe()      # the loop selects on `waker`
        os.set_blocking(self.waker, False)
        os.set_blocking(self._wake, False)

    @property
    def free(self) -> bool:
        return self.busy < self.size

    def submit(self, job: Job) -> None:
        """Only from the loop's thread, while `free`."""
        if self.busy == len(self._threads):
            thread = threading.Thread(target=self._run, name=f"request-{self.busy}", daemon=True)
            thread.start()
            self._threads.append(thread)
        self.busy += 1
        self._jobs.put(job)

    def finished(self) -> list[tuple[Job, Done]]:
        """What threads completed since the last call (the loop calls it when `waker` is readable)."""
        try:
            os.read(self.waker, 4096)
        except BlockingIOError:
            pass
        found = []
        while True:
            try:
                found.append(self._done.get_nowait())
            except queue.Empty:
                break
        self.busy -= len(found)
        return found

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            self._done.put((job, self._work(job)))
            try:
                os.write(self._wake, b"\0")
            except BlockingIOError:
                pass   # the pipe is full: the loop is being woken anyway

    def stop(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join(5)
