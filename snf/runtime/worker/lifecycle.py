"""A worker's life: start from a trusted datadir, record assignments, drain, fence.

- Start: after an unclean stop the local RocksDB may hold writes that never
  reached the changelog (Faust writes locally first), so it is discarded and
  the tables are restored from the changelog (`prepare_datadir`).
- Assignment: after every rebalance the worker writes assignment.json (the
  supervisor's readiness signal, with the member id it evicts a dead worker
  by) and forgets partitions that went elsewhere.
- Drain: a planned stop (scale-in, undeploy, rolling restart, pod eviction,
  SIGTERM) finishes the record in hand, takes no other, commits, and only then
  leaves the group. Faust's own stop commits only what was acked before it
  cancels the agent, so the successor would redo (and re-send) the last events.
- Fencing: a worker stopped (SIGSTOP) longer than STALL_LIMIT may have been
  replaced; on SIGCONT it exits before sending anything more, and restarts clean.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

from snf.runtime.worker import faust_compat
from snf.runtime.worker.commit import Committer
from snf.runtime.worker.coordination import Coordination
from snf.runtime.worker.files import Assignment, WorkerFiles
from snf.runtime.worker.processor import Processor

__all__ = ["STALL_LIMIT", "Lifecycle", "die", "prepare_datadir"]

log = logging.getLogger("snf.worker")
STALL_LIMIT = 4.0  # seconds stopped after which a worker may have been fenced out
DRAIN_TIMEOUT = 15.0  # seconds a drain waits for the record in hand


def die(what: str) -> None:
    """Crash-only: exit at once. Nothing is lost: the offsets of the record in hand
    are not committed and the changelog holds the state, so a restarted worker
    picks up exactly there. (Faust would otherwise keep a dead agent.)"""
    log.critical("%s; exiting", what, exc_info=True)
    os._exit(70)  # EX_SOFTWARE


def prepare_datadir(datadir: Path) -> None:
    """Before the app starts: not ready yet, and local tables only after a clean stop."""
    datadir.mkdir(parents=True, exist_ok=True)
    files = WorkerFiles(datadir)
    files.clear_assignment()  # a restart is not ready until its first rebalance
    if not files.take_clean_stop():
        shutil.rmtree(datadir / "v1" / "tables", ignore_errors=True)


class Lifecycle:
    def __init__(
        self,
        app: Any,
        processor: Processor,
        committer: Committer,
        coord: Coordination,
        files: WorkerFiles,
    ) -> None:
        self.app = app
        self.processor = processor
        self.committer = committer
        self.coord = coord
        self.files = files
        self.fn = processor.fn

    def assigned(self) -> list[int]:
        """The input partitions this worker owns now."""
        topic = self.fn.input_topic
        return sorted(tp.partition for tp in self.app.consumer.assignment() if tp.topic == topic)

    def record_assignment(self) -> None:
        """After a rebalance: write assignment.json, forget partitions gone elsewhere."""
        mine = self.assigned()
        member = faust_compat.member_id(self.app.consumer)
        self.files.write_assignment(Assignment(mine, time.time(), self.fn.group_id, member))
        self.processor.keep_only(mine)
        log.info("%s assigned partitions %s", self.fn.name, mine)

    async def take_over_stops(self) -> None:
        """Install snf's SIGTERM (drain) and commit in place of Faust's. Run as an app
        task: it starts after Faust's worker installed its handlers, so these win."""
        loop = asyncio.get_running_loop()

        async def stop() -> None:
            try:
                await self.drain()
            finally:
                os.kill(os.getpid(), signal.SIGINT)  # then Faust's own shutdown

        loop.add_signal_handler(signal.SIGTERM, lambda: asyncio.ensure_future(stop()))
        # Faust's periodic and rebalance commits go through snf's committer.
        faust_compat.replace_commit(
            self.app.consumer, lambda offsets: self.committer.commit(set(offsets))
        )

    async def drain(self, timeout: float = DRAIN_TIMEOUT) -> None:
        """Finish the record in hand, take no other, commit, then let Faust stop."""
        consumer, coord = self.app.consumer, self.coord
        coord.draining.set()
        consumer.stop_flow()
        self.app.flow_control.suspend()
        consumer.pause_partitions(consumer.assignment())
        deadline = time.monotonic() + timeout
        while (coord.busy.is_set() or coord.lock.locked()) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await self.committer.commit(consumer.assignment())
        if await self.committer.wait_acked():
            self.files.mark_clean_stop()  # the local tables match the changelog
        log.info(
            "%s drained and committed; stopping; counters %s",
            self.fn.name,
            dict(self.processor.counters),
        )

    async def fence_on_stall(self) -> None:
        """A worker stopped longer than its session was replaced: its partitions have
        a new owner. Exit on SIGCONT, before anything it still holds is sent (a
        Python signal handler runs before the event loop resumes). Runs forever."""
        last_tick = time.monotonic()

        def on_continue(signum: int, frame: Any) -> None:
            stopped = time.monotonic() - last_tick
            if stopped > STALL_LIMIT:
                os.write(2, f"snf: stopped {stopped:.1f} s, possibly fenced; exiting\n".encode())
                os._exit(75)  # EX_TEMPFAIL: the supervisor restarts it

        signal.signal(signal.SIGCONT, on_continue)
        while True:
            last_tick = time.monotonic()
            await asyncio.sleep(0.25)
