"""``han-worker run``: take jobs from the queues, run them, record them, and outlive what goes away.

The serving thread reads top to bottom: maintenance (switch control plane, deliver the spool, reconcile),
next delivery (a reclaimed entry or a new one), claim, run, record. While more deliveries wait and no
maintenance is due, the next one is taken just before a job's result is committed and claimed in the
same transaction (one commit per job), then run, and so on; the loop goes back to maintenance as soon
as the queue is empty, a stop or a switch is requested or housekeeping is due. Backends run in the
serving thread itself: a job costs no hand-over between threads. Before the worker registers, that thread
warms the backends it serves up (:func:`han_worker.backends.base.warm_up`: a model loaded there is used by
every job of the worker's life), while the main thread connects.

The main thread only supervises, so that it is always free for signals however long a backend computes:
on SIGTERM it asks the loop to drain, and should a backend not stop within the grace period and
:data:`han_worker.worker.attempt.ABANDON_AFTER_SECONDS` more, it gives that job back and leaves the process
without it. A job that is cancelled (the heartbeat learns it) or past its timeout (the main thread watches
the clock) is asked to stop at once; should its backend not stop within ABANDON_AFTER_SECONDS, the main thread
records the attempt, leaves that serving thread behind with it and starts another, so that a hung job never
holds its worker. Two helper threads only watch: the heartbeat (lease, ledger heartbeat, registry) and the
monitor (probes that decide a failover). Switching happens only between jobs, in the serving thread; a
job's result always goes to the control plane it came from. No fork() and no SIGALRM anywhere: the same
loop runs on Windows.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from han_worker.backends import (
    StandinPlatformError,
    UnsupportedQueue,
    WorkerPlatform,
    backends_for_queues,
    current_platform,
    worker_platform,
)
from han_worker.backends.base import Backend, unavailable_reason, warm_up
from han_worker.config import WorkerConfig
from han_worker.control_plane import walltime
from han_worker.selection.endpoints import EndpointsError, EndpointsGone, format_time, load_endpoints_file
from han_worker.selection.policy import FailoverGate, PegasusDown
from han_worker.selection.resolver import Choice, Selector, authentication_failures
from han_worker.store.ledger import AttemptOwner, Claim
from han_worker.store.link import (
    CONTROL_PLANE_ERRORS,
    SERVICE_ERRORS,
    ConnectError,
    Link,
    describe,
    open_link,
)
from han_worker.store.queues import Delivery
from han_worker.store.spool import Spool
from han_worker.store.tallies import record_switch
from han_worker.worker import attempt, scratch
from han_worker.worker.attempt import (
    RECORDING_ERRORS,
    AttemptResult,
    DrainClock,
    InFlight,
    Successor,
    Timings,
    deliver_spooled,
    log_result,
    record,
    run_attempt,
)
from han_worker.worker.reconciler import reconcile
from han_worker.worker.walltime_guard import WalltimeGuard

log = logging.getLogger(__name__)

EXIT_OK = 0
# After a failed health check, the next ones come this many times faster until the gate decides.
CONFIRM_SPEEDUP = 5
SUPERVISE_SECONDS = 0.5  # how often the main thread looks for a stuck backend and for a job past its time
# Serving threads left behind with a backend that would not stop (each may hold a model and a thread): with
# this many still alive, the worker drains, so that its keeper or Slurm starts a fresh process.
MAX_LEFT_BEHIND = 3


class StartError(RuntimeError):
    """The worker cannot start (wrong credentials, nothing to serve); exit 2 with this message."""


@dataclass(frozen=True)
class Identity:
    worker_id: str
    host: str
    platform: str
    slurm_job_id: str

    @classmethod
    def here(cls, platform: str) -> Identity:
        """This process; ``platform`` is what it records (``windows-standin`` for the Windows stand-in)."""
        host = socket.gethostname()
        slurm_job = slurm_job_label(os.environ)
        # The ledger keeps the worker id: with the Slurm job (array task) in it, a job's record says which
        # Slurm job did it. <host>[-slurm<job>]-<pid>-<random>
        where = f"{host}-slurm{slurm_job}" if slurm_job else host
        return cls(f"{where}-{os.getpid()}-{os.urandom(2).hex()}", host, platform,
                   os.environ.get("SLURM_JOB_ID", ""))  # fmt: skip


def slurm_job_label(env: Mapping[str, str]) -> str:
    """``123_4`` for task 4 of array job 123, ``125`` for a plain job, ``""`` outside Slurm."""
    array_job, task = env.get("SLURM_ARRAY_JOB_ID", ""), env.get("SLURM_ARRAY_TASK_ID", "")
    if array_job.isdigit() and task.isdigit():
        return f"{array_job}_{task}"
    job = env.get("SLURM_JOB_ID", "")
    return job if job.isdigit() else ""


def _walltime_end(slurm_job_id: str) -> str:
    """When this worker's Slurm job ends (its walltime), as the registry shows it; "" outside Slurm or when
    Slurm cannot tell (then the worker shows no walltime)."""
    end = walltime.job_end_time(slurm_job_id) if slurm_job_id else None
    return "" if end is None else format_time(end)


def platform_here() -> WorkerPlatform:
    """The platform this worker serves and records; a bad ``HAN_WORKER_STANDIN_PLATFORM`` cannot start."""
    try:
        return worker_platform()
    except StandinPlatformError as exc:
        raise StartError(str(exc)) from None


def backends_to_serve(queues: Iterable[str]) -> dict[str, Backend]:
    """Kind -> backend for every queue; refuses a queue this machine cannot serve, saying why."""
    kinds = {}
    for queue, backends in backends_for_queues(queues, platform_here().serves).items():
        for backend in backends:
            reason = unavailable_reason(backend)
            if reason:
                raise UnsupportedQueue(f"queue {queue!r}: backend {backend.name} cannot run here: {reason}")
            kinds[backend.name] = backend
    return kinds


class Periodic(threading.Thread):
    """Run ``action`` every ``interval()`` seconds, or at once when woken, until ``stop`` is set.

    Failures are logged, not fatal. The interval is asked for before each wait, so it can change."""

    def __init__(
        self, name: str, interval: Callable[[], float], action: Callable[[], None], stop: threading.Event
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.interval, self.action, self.stop = interval, action, stop
        self._woken = threading.Event()

    def wake(self) -> None:
        """Run the action now instead of at the end of the current wait."""
        self._woken.set()

    def run(self) -> None:
        while not self.stop.is_set():
            self._woken.wait(self.interval())
            self._woken.clear()
            if self.stop.is_set():
                return
            try:
                self.action()
            except Exception as exc:  # a dead control plane; the monitor and the main loop handle it
                log.debug("%s: %s", self.name, describe(exc))


class Worker:
    def __init__(
        self, config: WorkerConfig, backends: Mapping[str, Backend], selector: Selector, *,
        log_successes: bool = True, wait_for_control_plane: bool = False,
    ) -> None:  # fmt: skip
        self.config = config
        # Mode pegasus, its control plane down at start: wait for it (under a keeper), or exit 2 (by hand).
        self.wait_for_control_plane = wait_for_control_plane
        self.log_successes = log_successes  # False: no line per succeeded job (the ledger has them all)
        self.backends = backends
        self.selector = selector
        self.platform = platform_here()
        self.identity = Identity.here(self.platform.recorded)
        self.walltime = WalltimeGuard(self.identity.slurm_job_id, tuple(backends))
        self.spool = Spool(config.spool_dir)
        self.clock = DrainClock(config.drain_grace_seconds)
        self.stopping = threading.Event()
        # Held by whoever records the job in flight: the serving thread, or the main thread leaving it behind.
        self._recording = threading.Lock()
        self._abandoned = False
        self.gate = FailoverGate(config.flap_threshold)
        self.link: Link | None = None
        self.inflight: InFlight | None = None
        self.jobs_done = 0
        self.commits_before = 0  # ledger commits on control planes we left
        self.started_at = format_time(datetime.now(timezone.utc))
        self.walltime_end = ""  # the Slurm job's end (han-worker top, /metrics); asked once, in run()
        self._switch = threading.Event()
        self._switch_reason = ""
        self._pegasus_ok = 0
        self._next_reclaim = 0.0
        self._next_housekeeping = 0.0
        self._failures = 0
        self._idle_since = time.monotonic()  # when the last job ended, or when serving began
        self.left_idle = False  # it left by itself, idle for idle_timeout_seconds
        self._scratch: Path | None = None  # holds the jobs' scratch directories; removed when leaving
        self.monitor: Periodic | None = None
        self._warmed = threading.Event()  # the serving thread has warmed the backends up (or failed to)
        self._warm_failure: str | None = None
        self._go = threading.Event()  # the serving thread may serve (registered) or must end (not started)
        self.timings = Timings()  # where the jobs' time went, summed over the worker's life
        self._generation = 0  # the serving thread that serves; an older one was left behind with a stuck job
        self._left_behind: list[threading.Thread] = []
        self._workdirs = itertools.count()  # a left-behind job's scratch directory is never another's

    # -- life cycle ------------------------------------------------------------------------------

    def run(self) -> int:
        if self.platform.standin:
            log.warning(
                "this worker is a STAND-IN for %s (HAN_WORKER_STANDIN_PLATFORM=%s): it runs on %s, serves "
                "the %s backends and records its platform as %s",
                self.platform.serves, self.platform.serves, current_platform(), self.platform.serves,
                self.platform.recorded,
            )  # fmt: skip
        self._install_signal_handlers()
        self.walltime_end = _walltime_end(self.identity.slurm_job_id)
        scratch.remove_abandoned()  # what killed workers before us left (a keeper's restart, an earlier task)
        serving = threading.Thread(target=self._serve_until_stopped, name="serving", daemon=True)
        serving.start()  # it warms the backends up while this thread connects, and serves once registered
        try:
            link = self._connect_first()
            if link is not None and self._warmed_up(link):
                self._serve_on(link, serving)
        finally:
            self._go.set()  # whatever happened, the serving thread does not wait for ever
        return EXIT_OK

    def _serve_on(self, link: Link, serving: threading.Thread) -> None:
        """Register on ``link``, let the serving thread take jobs and supervise it until it ends."""
        try:
            self._use(link, link.choice.reason)
        except CONTROL_PLANE_ERRORS as exc:  # gone again already: the loop and the monitor take over
            log.warning("%s: %s", link.source, describe(exc))
        threads_stop = threading.Event()
        self.monitor = Periodic("monitor", self.monitor_interval, self.monitor_tick, threads_stop)
        threads = [
            Periodic("heartbeat", lambda: self.config.heartbeat_seconds, self.heartbeat_tick, threads_stop),
            self.monitor,
        ]
        for thread in threads:
            thread.start()
        self._idle_since = time.monotonic()  # idle time counts from the first registration, not the warm-up
        self._go.set()
        try:
            self._supervise(serving)
        finally:
            threads_stop.set()
            for thread in threads:
                thread.wake()
            self._leave()

    def _serve_until_stopped(self, generation: int = 0) -> None:
        self._warm_up()
        self._go.wait()
        if self.link is None:  # run() ended before registering: a stop, or a refusal at start
            return
        if self._warm_failure is not None:  # a replacement's backend: it warmed up once, but not now
            log.error("cannot serve on: %s; leaving", self._warm_failure)
            self.stop()
            return
        while not self.stopping.is_set() and generation == self._generation:
            self._step()

    def _warm_up(self) -> None:
        """Warm every served backend up in this thread, the one that runs its jobs; log what it took."""
        try:
            for backend in self.backends.values():
                try:
                    seconds = warm_up(backend)
                except Exception as exc:  # a model that does not load: this worker cannot serve the queue
                    self._warm_failure = (
                        f"queue {backend.queue!r}: backend {backend.name} cannot load its model: "
                        f"{type(exc).__name__}: {describe(exc)}"
                    )
                    return
                if seconds is not None:
                    log.info("backend %s warmed up in %.2f s, before the first job", backend.name, seconds)
        finally:
            self._warmed.set()

    def _warmed_up(self, link: Link) -> bool:
        """Wait until the serving thread has warmed the backends up; False when asked to stop meanwhile.
        A backend that cannot warm up is a :class:`StartError`."""
        while not self._warmed.wait(SUPERVISE_SECONDS):
            if self.stopping.is_set():
                break
        if self._warmed.is_set() and self._warm_failure is None and not self.stopping.is_set():
            return True
        link.close()
        if self._warm_failure is not None:
            raise StartError(self._warm_failure)
        return False

    def _supervise(self, serving: threading.Thread) -> None:
        """Wait for the serving thread to end, leaving behind a backend that does not stop when asked; stop
        a job past its time, and serve on in a new thread when a stopped job's backend does not stop."""
        while serving.is_alive():
            serving.join(SUPERVISE_SECONDS)
            if serving.is_alive() and self.clock.abandon_due():
                self._abandon()
                return
            serving = self._police(serving)

    def _police(self, serving: threading.Thread) -> threading.Thread:
        """Ask a job past its time to stop; leave a stopped job's stuck backend behind. The serving thread."""
        inflight, now = self.inflight, time.monotonic()
        if inflight is None or self.clock.requested_at is not None:  # a drain has its own way out
            return serving
        if inflight.timed_out(now) and inflight.ask_to_stop("timed_out"):
            log.warning("job %s is past its timeout (%s): asking it to stop", inflight.claim.job_id,
                        inflight.stop_error())  # fmt: skip
        if inflight.abandon_due(now) and self._leave_behind(inflight):
            return self._start_serving(serving)
        return serving

    def _leave_behind(self, inflight: InFlight) -> bool:
        """Record the stopped job whose backend did not stop (cancelled, timed_out) and let its serving thread
        go on alone; False when its own thread is recording it (it did stop, just now)."""
        if not self._recording.acquire(timeout=SUPERVISE_SECONDS):
            return False
        try:
            if self.inflight is not inflight or self._abandoned:
                return False
            inflight.abandoned, self.inflight = True, None
            self.jobs_done += 1
            seconds = attempt.ABANDON_AFTER_SECONDS
            error = f"{inflight.stop_error()}; its backend did not stop {seconds:g} s after it was asked to"
            log.error("job %s: %s; leaving it behind and serving on", inflight.claim.job_id, error)
            result = AttemptResult(inflight.stop_reason or "cancelled", error=error)
            log_result(inflight.claim, result, record(inflight, result, self.spool).report)
        except Exception:  # the record goes to the spool when it cannot go in; anything else is a bug
            log.exception("recording job %s, left behind", inflight.claim.job_id)
        finally:
            self._recording.release()
        return True

    def _start_serving(self, stuck: threading.Thread) -> threading.Thread:
        """A new serving thread instead of ``stuck`` (it ends once its backend returns, recording nothing)."""
        self._left_behind = [thread for thread in [*self._left_behind, stuck] if thread.is_alive()]
        if len(self._left_behind) >= MAX_LEFT_BEHIND:
            log.error("%d serving threads are stuck in backends that would not stop: draining, so that a "
                      "fresh worker takes over", len(self._left_behind))  # fmt: skip
            self.stop()
        self._generation += 1
        serving = threading.Thread(target=self._serve_until_stopped, args=(self._generation,),
                                   name=f"serving-{self._generation}", daemon=True)  # fmt: skip
        serving.start()
        return serving

    def _abandon(self) -> None:
        """Give the job in flight back (released: it does not count as an attempt) and stop waiting for it:
        its backend did not stop when asked. The serving thread, a daemon, ends with the process."""
        inflight = self.inflight
        what = f"job {inflight.claim.job_id}" if inflight else "the serving thread"
        seconds = attempt.ABANDON_AFTER_SECONDS
        log.error("%s did not stop %gs after it was asked to; leaving it behind", what, seconds)
        # A recording in progress is the job's own result: let it end (its calls have timeouts).
        if not self._recording.acquire(timeout=self.config.probe_timeout_seconds * 3):
            return
        try:
            self._abandoned = True
            inflight = self.inflight
            if inflight is not None:
                # A job asked to stop for its own reason ends for that reason; else it is given back.
                error = "the worker is draining (the backend did not stop)"
                if inflight.stop_reason is not None:
                    error = f"{inflight.stop_error()}; {error}"
                result = AttemptResult(inflight.stop_reason or "released", error=error)
                log_result(inflight.claim, result, record(inflight, result, self.spool).report)
        finally:
            self._recording.release()

    def stop(self) -> None:
        """Stop taking jobs; the job in flight has the grace period to finish, then goes back."""
        self.clock.request()
        self.stopping.set()

    def _install_signal_handlers(self) -> None:
        def on_signal(signum: int, _frame: object) -> None:
            log.info("received %s: draining", signal.Signals(signum).name)
            self.stop()

        for name in ("SIGTERM", "SIGINT", "SIGBREAK"):  # SIGBREAK: Ctrl-Break on Windows
            if hasattr(signal, name):
                signal.signal(getattr(signal, name), on_signal)

    def _connect_first(self) -> Link | None:
        delay = 1.0
        while not self.stopping.is_set():
            try:
                choice = self.selector.choose()  # EndpointsError: mode pegasus cannot be satisfied
            except PegasusDown as exc:  # restarting (a keeper's, a walltime's successor): wait for it
                if not self.wait_for_control_plane:
                    raise
                wait = min(delay, self.config.probe_interval_seconds)  # as often as a serving worker probes
                log.warning("Pegasus's control plane is down: %s; trying again in %gs", exc, wait)
                self.stopping.wait(wait)
                delay = min(delay * 2, 30.0)
                continue
            wrong = authentication_failures(choice.probes)
            if wrong:
                raise StartError(f"{choice.source}: " + "; ".join(str(result) for result in wrong))
            try:
                return self._open(choice)
            except ConnectError as exc:
                if exc.permanent:
                    raise StartError(str(exc)) from exc
                log.warning("cannot use %s yet: %s; retrying in %gs", choice.describe(), exc, delay)
            self.stopping.wait(delay)
            delay = min(delay * 2, 30.0)
        return None

    def _open(self, choice: Choice) -> Link:
        return open_link(
            choice,
            timeout=self.config.probe_timeout_seconds,
            name=f"han-worker {self.identity.worker_id}",
            block_seconds=self._block_seconds,
        )

    @property
    def _block_seconds(self) -> float:
        return min(1.0, self.config.lease_seconds / 2)

    def _use(self, link: Link, reason: str) -> None:
        """Make ``link`` current: groups, spool, reconciliation, registry."""
        self.link = link
        self.gate.failures, self._pegasus_ok = 0, 0  # health counts are per control plane
        for queue in self.config.queues:
            link.queues.ensure_group(queue)
        log.info("serving %s on %s: %s", ", ".join(self.config.queues), link.choice.describe(), reason)
        # A control plane just joined may have been down (a walltime rollover, a restart): every lease on
        # it aged through the gap, though the workers holding them are alive and about to heartbeat again.
        # Take no one's job before they had one lease to do so, or each gap costs every job in flight an
        # attempt (three gaps and a long job is dead).
        self._next_reclaim = time.monotonic() + self.config.lease_seconds
        self._housekeeping(link)
        try:
            link.artifacts.ready()
            link.ledger.warm(self._owner(link), self.config.lease_seconds)
        except RECORDING_ERRORS as exc:  # the first job will meet it too, and deal with it
            log.warning("%s's object store or ledger: %s", link.source, describe(exc))
        link.queues.register(self.identity.worker_id, self.registry_fields(), self._registry_ttl)

    def _leave(self) -> None:
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
        link = self.link
        if link is None:
            return
        try:
            link.queues.flush_owed()  # before forget_consumer, which keeps a consumer with pending entries
            link.queues.unregister(self.identity.worker_id)
            link.queues.forget_consumer(self.config.queues, self.identity.worker_id)
        except CONTROL_PLANE_ERRORS as exc:
            log.debug("leaving %s: %s", link.source, describe(exc))
        commits = self.commits_before + link.ledger.commits
        link.close()
        per_job = f" ({commits / self.jobs_done:.2f} per job)" if self.jobs_done else ""
        log.info("stopped after %d job(s); %d ledger commits%s", self.jobs_done, commits, per_job)
        if self.jobs_done:
            log.info("time per job: %s", self.timings.per_job(self.jobs_done))

    # -- the loop --------------------------------------------------------------------------------

    def _step(self) -> None:
        try:
            self._maintain()
            delivery = self._next_delivery(self._block_seconds)
            if delivery is not None:
                self._serve(delivery)
                self._idle_since = time.monotonic()
            else:
                self._leave_when_idle()
            self._failures = 0
        except CONTROL_PLANE_ERRORS as exc:
            if self._failures == 0 and self.monitor is not None:
                self.monitor.wake()  # our own connection broke: check the control plane now, not next tick
            self._back_off(f"control plane error: {describe(exc)}")
        except Exception:  # anything else is a bug or a surprise: keep serving, but say where
            log.exception("unexpected error in the worker loop")
            self._back_off("unexpected error")

    def _leave_when_idle(self) -> None:
        """Stop after ``idle_timeout_seconds`` with nothing to do: an elastic worker's Slurm job ends and
        gives its GPU back. Nothing is in flight, so the drain that follows only acknowledges and leaves."""
        timeout = self.config.idle_timeout_seconds
        if timeout and time.monotonic() - self._idle_since >= timeout and not self.stopping.is_set():
            log.info("nothing to do for %gs (idle_timeout_seconds): leaving", timeout)
            self.left_idle = True
            self.stop()

    def _back_off(self, what: str) -> None:
        self._failures += 1
        level = logging.WARNING if self._failures == 1 else logging.DEBUG
        log.log(level, "%s (%d in a row)", what, self._failures)
        self.stopping.wait(min(2.0, 0.05 * 2**self._failures))

    def _maintain(self) -> None:
        if self._switch.is_set():
            self._switch_now()
        assert self.link is not None
        if time.monotonic() >= self._next_housekeeping:
            self._housekeeping(self.link)

    def _housekeeping(self, link: Link) -> None:
        self._next_housekeeping = time.monotonic() + self.config.reconcile_seconds
        self.spool.recover_stale()
        try:
            delivered = deliver_spooled(link, self.spool, self.identity.worker_id)
        except RECORDING_ERRORS as exc:  # kept for the next round; the reconciler must still run
            log.warning("spooled results not delivered to %s yet: %s", link.source, describe(exc))
        else:
            if delivered:
                log.info("delivered %d spooled result(s) to %s", delivered, link.source)
        reconcile(link, self.config.lease_seconds)

    def _next_delivery(self, block_seconds: float | None) -> Delivery | None:
        """A reclaimed entry when one is due, else a new one, waiting up to ``block_seconds`` (None: not)."""
        link = self.link
        assert link is not None
        if time.monotonic() >= self._next_reclaim:
            self._next_reclaim = time.monotonic() + self.config.lease_seconds / 2
            for queue in self.config.queues:
                delivery = link.queues.reclaim(queue, self.identity.worker_id, self.config.lease_seconds)
                if delivery is not None:
                    log.info("reclaimed job %s from a worker whose lease expired", delivery.job_id)
                    self._next_reclaim = 0.0  # there may be more
                    return delivery
        return link.queues.next_delivery(self.config.queues, self.identity.worker_id, block_seconds)

    def _owner(self, link: Link) -> AttemptOwner:
        identity = self.identity
        return AttemptOwner(
            identity.worker_id, identity.host, identity.platform, link.source, link.choice.epoch
        )

    def _serve(self, delivery: Delivery) -> None:
        """Claim and run ``delivery``, then each successor taken while recording (already claimed)."""
        link = self.link
        assert link is not None
        claim = self._claim(link, delivery)
        while claim is not None:
            delivery, claim = self._process(link, delivery, claim)

    def _claim(self, link: Link, delivery: Delivery) -> Claim | None:
        """Start an attempt of the delivered job; None when there is nothing to run (entry dealt with)."""
        # Arrived while we were asked to stop, or too long for our walltime: hand it to another worker.
        if self.stopping.is_set() or self._cannot_finish(link, delivery):
            self._hand_back(link, delivery)
            return None
        lease = self.config.lease_seconds
        claim = link.ledger.claim(delivery.job_id, delivery.entry_id, self._owner(link), lease)
        if claim is None:
            self._refused(link, delivery)
        return claim

    def _cannot_finish(self, link: Link, delivery: Delivery) -> bool:
        """Too little walltime left for the job: this worker drains (every later job would be refused too)."""
        reason = self.walltime.refusal(link.ledger.connection(), link.source, delivery.job_id)
        if reason is not None:
            log.info("job %s left to another worker: %s; leaving", delivery.job_id, reason)
            self.stop()
        return reason is not None

    def _hand_back(self, link: Link, delivery: Delivery) -> None:
        link.queues.enqueue(delivery.queue, delivery.job_id)
        link.queues.done(delivery)

    def _refused(self, link: Link, delivery: Delivery) -> None:
        # Finished, running elsewhere (a duplicate entry) or out of attempts: nothing left to do
        # with this entry. Should the other holder die, the reconciler puts the job back.
        if link.ledger.bury_if_exhausted(delivery.job_id, self.config.lease_seconds):
            log.warning("job %s is dead: its last attempt lost its worker", delivery.job_id)
        link.queues.done(delivery)

    def _process(self, link: Link, delivery: Delivery, claim: Claim) -> tuple[Delivery, Claim | None]:
        """Run and record the claimed job; returns the successor taken meanwhile and its claim, if any."""
        started = time.perf_counter()
        self.inflight = inflight = InFlight(delivery, claim, link, timeout=self._timeout(claim))
        workdir = self._workdir()
        try:
            result = run_attempt(inflight, self.backends.get(claim.kind), workdir, self.clock)
            with self._recording:
                # The main thread gave this job back (the process is leaving) or recorded it and left this
                # thread behind (it serves on in another): nothing more to do here.
                if self._abandoned or inflight.abandoned:
                    return delivery, None
                recorded = record(inflight, result, self.spool, lambda: self._successor(link))
                self.inflight = None
            log_result(claim, result, recorded.report, successes=self.log_successes)
        finally:
            if self.inflight is inflight:
                self.inflight = None
            if not inflight.abandoned:  # counted when it was left behind
                self.jobs_done += 1
            self._clear(workdir)
            inflight.timings.seconds["total"] = time.perf_counter() - started
            self.timings.add(inflight.timings)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("job %s took %s", claim.job_id, inflight.timings.per_job(1))
        successor = recorded.successor
        if successor is None:
            return delivery, None
        if not recorded.tried:  # the combined commit failed and only the result went in: claim alone
            return successor.delivery, self._claim(link, successor.delivery)
        if recorded.claim is None:
            self._refused(link, successor.delivery)
        return successor.delivery, recorded.claim

    def _timeout(self, claim: Claim) -> tuple[float, str] | None:
        """The job's time limit and where it comes from: its own (submit --timeout), else its kind's."""
        if claim.timeout_seconds is not None:
            return claim.timeout_seconds, "its --timeout"
        default = self.config.job_timeouts.get(claim.kind)
        return (
            None if default is None else (default, f"job_timeouts.{claim.kind} of the worker configuration")
        )

    def _workdir(self) -> Path:
        """Where the job's scratch directory goes: a name of its own inside this worker's private (0700)
        directory. The backend creates it by asking for it (JobContext.workdir): a job that does not, a
        no-op for one, costs no directory at all."""
        if self._scratch is None:
            self._scratch = scratch.make_scratch_dir()
        return self._scratch / f"job-{next(self._workdirs)}"

    def _clear(self, workdir: Path) -> None:
        """After a job: its scratch directory goes, if it made one; no job sees another's files."""
        if os.path.lexists(workdir):
            shutil.rmtree(workdir, ignore_errors=True)

    def _successor(self, link: Link) -> Successor | None:
        """The next waiting delivery, to claim with this job's result; None when none waits or the loop has
        something to do between jobs (a stop, a switch, housekeeping): the result is then committed alone."""
        if (self.stopping.is_set() or self._switch.is_set() or link is not self.link
                or time.monotonic() >= self._next_housekeeping):  # fmt: skip
            return None
        try:
            delivery = self._next_delivery(None)  # no waiting: a result is never held up
            if delivery is not None and (self.stopping.is_set() or self._cannot_finish(link, delivery)):
                self._hand_back(link, delivery)
                return None
        except CONTROL_PLANE_ERRORS as exc:  # the result goes in alone; the loop deals with Redis next
            log.debug("no successor taken: %s", describe(exc))
            return None
        if delivery is None:
            return None
        return Successor(delivery, self._owner(link), self.config.lease_seconds)

    # -- failover --------------------------------------------------------------------------------

    def request_switch(self, reason: str) -> None:
        if not self._switch.is_set():
            self._switch_reason = reason
            self._switch.set()
            log.warning("control plane switch requested: %s", reason)

    def _switch_now(self) -> None:
        reason, old = self._switch_reason, self.link
        self._switch.clear()
        assert old is not None
        try:
            new = self._open(self.selector.choose())
        except (EndpointsError, ConnectError) as exc:
            log.error("cannot switch control plane (%s): %s", reason, exc)
            return
        self.commits_before += old.ledger.commits
        try:
            old.queues.flush_owed()  # else those entries wait out a lease there, to be reclaimed and refused
            old.queues.unregister(self.identity.worker_id)
        except CONTROL_PLANE_ERRORS as exc:
            log.debug("unregistering from %s: %s", old.source, describe(exc))
        old.close()
        log.warning("control plane: %s -> %s", old.choice.describe(), new.choice.describe())
        if (old.source, old.choice.epoch) != (new.source, new.choice.epoch):  # not a reconnect (a rotation)
            self._count_switch(old.source, new)
        self._use(new, f"{reason}; {new.choice.reason}")

    def _count_switch(self, from_source: str, new: Link) -> None:
        """Count the switch in the ledger switched to (what /metrics reads); a control plane that fails this
        fails the next step too, so the switch goes on, uncounted."""
        try:
            record_switch(
                new.ledger.connection(), from_source, new.source, self.identity.worker_id, self.identity.host
            )
        except SERVICE_ERRORS as exc:
            log.warning("switch to %s not counted: %s", new.source, describe(exc))

    def monitor_interval(self) -> float:
        """The probe interval; after a failed check, a fifth of it until the gate decides.

        A dead control plane then costs one failed check plus threshold-1 quick confirmations (5 s + 2 x 1 s
        with the defaults), not threshold full intervals; a healthy one is still probed once an interval."""
        interval = self.config.probe_interval_seconds
        return interval / CONFIRM_SPEEDUP if self.gate.failures else interval

    def monitor_tick(self) -> None:
        """Probe the current control plane; in auto mode on the Mac, watch for Pegasus's return."""
        link = self.link
        assert link is not None
        if self._credentials_rotated(link):
            return  # probing with the old credentials would count a rotation as a failure
        problem = self._problem(link)
        if self.gate.observe(problem is None):
            self.request_switch(
                f"{link.source} failed {self.gate.threshold} health checks in a row: {problem}"
            )
        if self.config.mode == "auto" and link.source == "mac":
            pegasus_problem = self.selector.pegasus_problem()
            self._pegasus_ok = 0 if pegasus_problem else self._pegasus_ok + 1
            if self._pegasus_ok >= self.config.flap_threshold:
                self._pegasus_ok = 0
                self.request_switch("Pegasus is healthy again")

    def _credentials_rotated(self, link: Link) -> bool:
        """A rotation published new credentials for our control plane: reconnect with them (between jobs).

        The old ones may already be refused to new sessions, and are retired once every worker has moved."""
        on_disk = self.selector.credentials_on_disk(link.source)
        if on_disk is None or on_disk == link.choice.credentials:
            return False
        held = link.choice.credentials.generation
        if on_disk.generation != held:
            self.request_switch(
                f"{link.source}'s credentials were rotated (generation {held} -> {on_disk.generation})"
            )
        else:  # a rotation's retire phase: the same credentials, with the new certificate authority only
            self.request_switch(
                f"{link.source}'s credentials were republished (generation {held}, other authorities)"
            )
        return True

    def _problem(self, link: Link) -> str | None:
        if link.source == "pegasus":
            try:
                published = load_endpoints_file(self.config.endpoints_file)
            except EndpointsGone as exc:  # its supervisor said so: nothing to confirm
                self.request_switch(f"{link.source} is gone: {exc}")
                return str(exc)
            except EndpointsError as exc:
                return str(exc)
            if published.epoch != link.choice.epoch:
                self.request_switch(f"Pegasus's control plane restarted (epoch {published.epoch})")
        report = self.selector.probe(link.choice.endpoints, link.choice.credentials)
        return None if report.healthy else "; ".join(str(result) for result in report.failures)

    # -- heartbeat -------------------------------------------------------------------------------

    @property
    def _registry_ttl(self) -> float:
        return 3 * self.config.heartbeat_seconds + self.config.probe_timeout_seconds

    def heartbeat_tick(self) -> None:
        """Keep the job in flight ours (ledger first, then the lease) and the registry fresh."""
        inflight = self.inflight
        if inflight is not None and not inflight.superseded and not inflight.abandoned:
            claim = inflight.claim
            beat = inflight.link.beat_ledger.heartbeat(claim.job_id, claim.attempt)
            if beat.held:
                inflight.link.queues.renew(inflight.delivery, self.identity.worker_id)
                if beat.cancel_requested and inflight.ask_to_stop("cancelled"):
                    log.warning("job %s was cancelled: asking it to stop", claim.job_id)
            elif not inflight.abandoned:  # renewing now would take the entry back from its new owner
                inflight.superseded = True
                log.warning("job %s attempt %d was taken over by another worker", claim.job_id, claim.attempt)
        if self.link is not None:
            self.link.queues.register(self.identity.worker_id, self.registry_fields(), self._registry_ttl)
            # A long job holds up the loop's next read, which would carry the last job's acknowledgement.
            self.link.queues.flush_owed()

    def registry_fields(self) -> dict[str, str | int | float]:
        link, inflight, identity = self.link, self.inflight, self.identity
        assert link is not None
        return {
            "host": identity.host,
            "platform": identity.platform,
            "pid": os.getpid(),
            "queues": ",".join(self.config.queues),
            "slurm_job_id": identity.slurm_job_id,
            "current_job": inflight.claim.job_id if inflight else "",
            "control_plane": link.source,
            "epoch": link.choice.epoch,
            "credentials_generation": link.choice.credentials.generation,  # see control_plane/rotation.py
            "reason": link.choice.reason[:500],
            "started_at": self.started_at,
            "walltime_end": self.walltime_end,
            "heartbeat_at": format_time(datetime.now(timezone.utc)),
            "jobs_done": self.jobs_done,
            "ledger_commits": self.commits_before + link.ledger.commits,
            "draining": int(self.stopping.is_set()),
        }
