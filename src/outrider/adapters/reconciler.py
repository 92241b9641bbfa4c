"""The reconcile loop: keep the engine's LoRA adapters equal to the declared set, all the time.

The declared set lives here (`declare`, `retract`, `set_file_entries`). Every `interval` seconds, and at once after
any change, one pass reads what the engine has loaded (`GET /v1/models`) and starts one task per adapter that needs
work: fetch and load what is declared but missing (including everything a restarted engine forgot), unload what
outrider loaded and is no longer declared, and delete the files outrider downloaded for it (never a directory it
was only pointed at). Adapters someone else loaded are left alone.

Rules the loop keeps:
- one task per name at a time, under that name's `trio.Lock`, so operations on one adapter are serialized while
  different adapters proceed side by side (a slow download never holds up another adapter);
- a failed attempt backs off exponentially for that adapter alone; "engine unavailable" is not the adapter's
  fault and does not back off (the next pass that reaches the engine acts at once, so an engine restart is
  repaired within one interval of the engine answering again);
- the loop owns its failures: anything but cancellation is logged, counted and survived.

Callers that want the outcome wait on a `Ticket` (`wait_loaded`, `wait_gone`): they see only outcomes of attempts
that finish after their call, so a stale failure is never reported for a new request.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import trio

from outrider.adapters.fetch import AdapterFetcher, is_volume_source
from outrider.adapters.names import directory_name, display_source, validate_name
from outrider.adapters.state import Adapter, Origin, State, Ticket
from outrider.backoff import Backoff
from outrider.engines.base import LoraApi
from outrider.engines.client import EngineClient
from outrider.errors import (
    Conflict,
    EngineRefused,
    EngineUnavailable,
    InvalidRequest,
    NotFound,
    OutriderError,
)
from outrider.metrics.own import OwnMetrics
from outrider.transfer import ownership
from outrider.transfer.paths import Root, confine_any

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Declaration:
    """One adapter as the adapters file (or any bulk caller) declares it."""

    name: str
    source: str
    config: Mapping[str, object] | None = None


# Longest wait between retries of a failing adapter: a fixed bad source should not need a restart to be retried
# within minutes, and a broken one should not hammer the engine.
BACKOFF_MAX = 300.0
# No jitter: each adapter retries on its own schedule already, and the wait is shown to callers
# (`retry_in_seconds`) as the documented interval * 2^n.
UNJITTERED = 0.0


# A dataclass for its __init__ only (it keeps what it is given): a Reconciler is one live object, compared by
# identity and shown with the plain repr, as before.
@dataclasses.dataclass(eq=False, repr=False)
class Reconciler:
    """Owns the declared adapters and makes the engine match them. Start `run` with `nursery.start`."""

    engine: EngineClient
    lora: LoraApi
    fetcher: AdapterFetcher
    _: dataclasses.KW_ONLY
    adapter_root: Path
    interval: float
    metrics: OwnMetrics | None = None
    # Other directories a caller may have a download land in (a Kthena `output_dir` under the model root); the
    # adapter root is always one. Each with the flag that sets it, for the refusals to name.
    write_roots: tuple[Root, ...] = ()

    @property
    def roots(self) -> tuple[Root, ...]:
        return ((self.adapter_root, "--adapter-root"), *self.write_roots)

    def __post_init__(self) -> None:
        self._adapters: dict[str, Adapter] = {}
        self._locks: dict[str, trio.Lock] = {}
        self._busy: set[str] = set()
        self._wake = trio.Event()
        self._changed = trio.Event()
        self._engine_failures = 0
        self._engine_error: EngineUnavailable | None = None
        self._nursery: trio.Nursery | None = None
        self._update_gauges()

    # ----- the declared set -------------------------------------------------------------------------------------

    def get(self, name: str) -> Adapter | None:
        return self._adapters.get(name)

    def adapters(self) -> list[Adapter]:
        return sorted(self._adapters.values(), key=lambda a: a.name)

    def declare(
        self,
        name: str,
        source: str,
        config: Mapping[str, object] | None = None,
        *,
        origin: Origin = Origin.API,
        dest: Path | None = None,
        engine_path: bool = False,
    ) -> Ticket:
        """Declare that adapter `name` should be loaded from `source`. Returns at once; the loop does the work.

        `dest` (where a download lands; default `<adapter root>/<name>`) must already be confined to the adapter
        root by the caller (`transfer.paths.confine_off_loop`); the fetcher confines it again before writing.
        Declaring the same thing again changes nothing (and retries at once if it had failed). A different source,
        config or destination replaces the adapter. The API may not change a name the adapters file owns."""
        validate_name(name, "name")
        if not isinstance(source, str) or not source.strip():
            raise InvalidRequest("source must be a non-empty string", field="source")
        target = dest if dest is not None else self.adapter_root / directory_name(name)
        rec = self._adapters.get(name)
        now = time.time()
        declared = (source, config, target, engine_path)
        same = rec is not None and rec.desired and (rec.source, rec.config, rec.dest, rec.engine_path) == declared
        if rec is not None and rec.desired and rec.origin == Origin.FILE and origin == Origin.API and not same:
            raise Conflict(f"adapter {name!r} is declared by the adapters file; change it there", field="name")
        # A volume source's default directory is not written when the source is used in place (decided later):
        # only a named destination, or a remote source's, is sure to be.
        if dest is not None or not is_volume_source(source):
            self._refuse_shared_directory(name, target, "output_dir" if dest is not None else "name")
        if rec is None:
            rec = Adapter(name, source, config, target, origin, created_at=now, updated_at=now, engine_path=engine_path)
            self._adapters[name] = rec
            log.info("adapter %s declared (%s) from %s", name, origin, display_source(source))
            ticket = self._ticket(rec, created=True)
            self._changed_now(wake=True)
            return ticket
        if origin == Origin.FILE or rec.origin != Origin.FILE or not rec.desired:
            rec.origin = origin  # the file takes names over; the API never takes one from the file
        if same:
            if rec.state == State.FAILED:
                rec.retry_at = 0.0  # asked again: do not make the caller wait out the backoff
                self._changed_now(wake=True)
            return self._ticket(rec)
        if rec.desired:
            log.info("adapter %s re-declared from %s", name, display_source(source))
        if rec.fetch_scope is not None:
            rec.fetch_scope.cancel()  # a download of the old source is of no use now
        if rec.downloaded and rec.path is not None and (rec.source != source or rec.dest != target):
            rec.superseded = rec.path
        rec.source, rec.config, rec.dest, rec.engine_path = source, config, target, engine_path
        rec.desired = True
        rec.generation += 1
        rec.attempts = rec.failures = 0
        rec.retry_at = 0.0
        rec.error = None
        rec.path = None
        self._set_state(rec, State.PENDING)
        self._changed_now(wake=True)
        return self._ticket(rec)

    def _refuse_shared_directory(self, name: str, target: Path, field: str) -> None:
        """Two adapters never share a directory (nor one inside the other's): unloading one would delete the
        files the other is loaded from. Conflict (409) naming `field`."""
        for other in self._adapters.values():
            if other.name == name:
                continue
            writes = other.downloaded or not is_volume_source(other.source)
            for used in (other.dest if writes else None, other.path):
                if used is not None and (used == target or used in target.parents or target in used.parents):
                    raise Conflict(
                        f"{target} is adapter {other.name!r}'s directory ({used}); adapters do not share one",
                        field=field,
                    )

    def retract(self, name: str, *, origin: Origin = Origin.API, keep_files: bool = False) -> Ticket:
        """Declare that `name` should no longer be loaded. Raises NotFound if it is not declared.

        `keep_files`: leave what outrider downloaded for it on disk once it is unloaded (else it is deleted)."""
        rec = self._adapters.get(name)
        if rec is None or not rec.desired:
            raise NotFound(f"adapter {name!r} is not declared", field="name")
        if rec.origin == Origin.FILE and origin == Origin.API:
            raise Conflict(f"adapter {name!r} is declared by the adapters file; remove it there", field="name")
        rec.desired = False
        rec.keep_files = keep_files  # before anything below can forget the record
        rec.retry_at = 0.0
        rec.failures = 0
        rec.error = None
        if rec.fetch_scope is not None:
            rec.fetch_scope.cancel()
        ticket = self._ticket(rec)
        log.info("adapter %s retracted (%s)", name, origin)
        if rec.loaded_path is None and name not in self._busy:
            self._forget(rec)  # nothing at the engine is ours: nothing to undo
        else:
            self._set_state(rec, State.UNLOADING)
        self._changed_now(wake=True)
        return ticket

    def set_file_entries(self, entries: Sequence[Declaration]) -> None:
        """Make the file-owned set equal to `entries`: declare new and changed ones, retract removed ones.

        A file entry takes over a name the API declared (the file is the operator's configuration)."""
        wanted = {e.name for e in entries}
        for entry in entries:
            self.declare(entry.name, entry.source, entry.config, origin=Origin.FILE)
        for rec in list(self._adapters.values()):
            if rec.desired and rec.origin == Origin.FILE and rec.name not in wanted:
                self.retract(rec.name, origin=Origin.FILE)

    def _ticket(self, rec: Adapter, created: bool = False) -> Ticket:
        return Ticket(rec.name, rec.generation, rec.outcomes, self._engine_failures, created)

    # ----- waiting for outcomes ---------------------------------------------------------------------------------

    async def wait_loaded(self, ticket: Ticket) -> Adapter:
        """Return when the ticket's declaration is loaded; raise the error of the first attempt that fails after
        the ticket was taken (EngineRefused, a SourceError, EngineUnavailable), or Conflict if it was replaced."""
        while True:
            changed = self._changed
            rec = self._adapters.get(ticket.name)
            if rec is None or not rec.desired or rec.generation != ticket.generation:
                raise Conflict(f"adapter {ticket.name!r} was retracted or re-declared meanwhile", field="name")
            if rec.state == State.LOADED:
                return rec
            if rec.outcomes > ticket.outcomes and rec.error is not None:
                raise rec.error.clone() from None  # each waiter its own: see OutriderError.clone
            if self._engine_failures > ticket.engine_failures and self._engine_error is not None:
                raise self._engine_error.clone() from None
            await changed.wait()

    async def wait_gone(self, ticket: Ticket) -> None:
        """Return when the retracted adapter is unloaded (or was never loaded); raise the unload's error."""
        while True:
            changed = self._changed
            rec = self._adapters.get(ticket.name)
            if rec is None:
                return
            if rec.desired:
                raise Conflict(f"adapter {ticket.name!r} was declared again meanwhile", field="name")
            if rec.outcomes > ticket.outcomes and rec.error is not None:
                raise rec.error.clone() from None  # each waiter its own: see OutriderError.clone
            if self._engine_failures > ticket.engine_failures and self._engine_error is not None:
                raise self._engine_error.clone() from None
            await changed.wait()

    # ----- operations for the compatible routes -----------------------------------------------------------------

    async def load(
        self,
        name: str,
        source: str,
        config: Mapping[str, object] | None = None,
        dest: Path | None = None,
        *,
        engine_path: bool = False,
    ) -> Adapter:
        """Declare and wait until loaded. If this call created the declaration and the attempt failed, the
        declaration is withdrawn again: the caller was told it failed, so it must not appear later on its own."""
        ticket = self.declare(name, source, config, dest=dest, engine_path=engine_path)
        try:
            return await self.wait_loaded(ticket)
        except OutriderError:
            rec = self._adapters.get(name)
            if ticket.created and rec is not None and rec.desired and rec.generation == ticket.generation:
                self.retract(name)
            raise

    async def unload(self, name: str, *, keep_files: bool = False, missing_ok: bool = False) -> None:
        """Unload `name` now, whoever loaded it. Returns only if the engine unloaded it (or a retraction
        of outrider's own load completed); raises NotFound when the engine does not have it, unless `missing_ok`.

        `keep_files` leaves what outrider downloaded for it on disk (AIBrix's `cleanup_local: false`); by default
        it is deleted once the adapter is gone. Files outrider did not write are never deleted either way."""
        rec = self._adapters.get(name)
        if rec is not None and rec.desired:
            owned = rec.loaded_path is not None or name in self._busy
            ticket = self.retract(name, keep_files=keep_files)
            if owned:
                await self.wait_gone(ticket)
                return
        elif rec is not None:  # already being unloaded
            rec.keep_files = keep_files  # the latest caller's wish
            await self.wait_gone(self._ticket(rec))
            return
        # Not outrider's: relay to the engine, under the name's lock so it cannot interleave with a load.
        async with self._lock(name):
            try:
                await self.lora.unload(self.engine, name)
            except EngineRefused as exc:
                if exc.reason != "unknown_adapter":
                    raise
                if not missing_ok:
                    raise NotFound(exc.message, field="lora_name") from None

    # ----- the loop ---------------------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            while True:
                self._wake = trio.Event()
                try:
                    await self._pass()
                except Exception:
                    log.exception("adapter reconcile pass failed; continuing")
                    self._count_error("internal")
                with trio.move_on_after(self._next_delay()):
                    await self._wake.wait()

    def wake(self) -> None:
        self._wake.set()

    def _next_delay(self) -> float:
        now = trio.current_time()
        delay = self.interval
        for rec in self._adapters.values():
            if rec.name not in self._busy and rec.retry_at > now:
                delay = min(delay, rec.retry_at - now)
        return max(delay, 0.0)

    async def _pass(self) -> None:
        try:
            engine = await self.engine.list_adapters()
        except EngineUnavailable as exc:
            if self._engine_error is None:
                log.warning("adapters: %s", exc.message)
            self._engine_error = exc
            self._engine_failures += 1
            self._count_error("engine_unavailable")
            self._changed_now()
            return
        if self._engine_error is not None:
            log.info("adapters: engine at %s answers again", self.engine.base_url)
            self._engine_error = None
        now = trio.current_time()
        for rec in list(self._adapters.values()):
            if rec.name in self._busy:
                continue
            seen = engine.get(rec.name)
            ours = seen is not None and rec.loaded_path is not None and seen.path == rec.loaded_path
            if rec.desired:
                if rec.state == State.LOADED and ours:
                    continue
                if rec.state == State.LOADED:
                    log.warning("adapter %s is no longer loaded in the engine (restart?); loading it again", rec.name)
                    self._set_state(rec, State.PENDING)
                if not ours:
                    rec.loaded_path = None
                if rec.retry_at > now:
                    continue
                self._spawn(rec)
            elif not ours:
                self._forget(rec)  # the engine no longer holds what outrider loaded (restart): nothing to undo
            elif rec.retry_at <= now:
                self._spawn(rec)
        self._changed_now()

    def _spawn(self, rec: Adapter) -> None:
        assert self._nursery is not None, "run() has not started"
        self._busy.add(rec.name)
        self._nursery.start_soon(self._work, rec.name)

    def _lock(self, name: str) -> trio.Lock:
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = trio.Lock()
        return lock

    async def _work(self, name: str) -> None:
        try:
            async with self._lock(name):
                rec = self._adapters.get(name)
                if rec is None:
                    return
                if rec.desired:
                    await self._converge(rec)
                else:
                    await self._unload(rec)
        except Exception:
            log.exception("adapter %s: unexpected failure; will retry", name)
            self._count_error("internal")
            rec = self._adapters.get(name)
            if rec is not None:
                self._failed(rec, OutriderError(f"internal error while handling adapter {name!r}; see the log"))
        finally:
            self._busy.discard(name)
            rec = self._adapters.get(name)
            if rec is not None and not rec.desired and rec.loaded_path is None:
                self._forget(rec)  # retracted while its fetch or load was cut short: nothing left to undo
            elif rec is not None and rec.state in (State.PENDING, State.UNLOADING) and rec.error is None:
                self.wake()  # the declaration changed while this task ran: act on it now, not next interval
            self._changed_now()

    async def _converge(self, rec: Adapter) -> None:
        """Fetch (if needed) and load one declared adapter."""
        gen = rec.generation
        rec.attempts += 1
        started = trio.current_time()
        try:
            if rec.path is None and rec.engine_path:
                rec.path, rec.downloaded = Path(rec.source), False
            if rec.path is None:
                self._set_state(rec, State.DOWNLOADING)
                if rec.superseded is not None:
                    await self._remove_files(rec.name, rec.superseded)
                    rec.superseded = None
                with trio.CancelScope() as scope:
                    rec.fetch_scope = scope
                    fetched = await self.fetcher.fetch(rec.name, rec.source, rec.config, rec.dest)
                rec.fetch_scope = None
                if scope.cancelled_caught:
                    return  # retracted or replaced meanwhile; the next pass handles the new state
                rec.path, rec.downloaded = fetched.path, fetched.downloaded
                if not self._current(rec, gen):
                    return
            path_s = str(rec.path)
            seen = (await self.engine.list_adapters()).get(rec.name)
            if seen is not None and seen.path == path_s:
                self._loaded(rec, gen, path_s, started, adopted=True)
                return
            self._set_state(rec, State.LOADING)
            if seen is not None and rec.loaded_path is not None:
                # An older declaration of this name that outrider loaded: replace it.
                await self.lora.unload(self.engine, rec.name)
                rec.loaded_path = None
            try:
                await self.lora.load(self.engine, rec.name, path_s)
            except EngineRefused as exc:
                if exc.reason != "already_loaded":
                    raise
                seen = (await self.engine.list_adapters()).get(rec.name)
                if seen is None or seen.path != path_s:
                    raise
            self._loaded(rec, gen, path_s, started, adopted=False)
        except EngineUnavailable as exc:
            # Not this adapter's fault: no backoff; the next pass that reaches the engine tries again.
            if self._current(rec, gen):
                rec.error = exc
                rec.outcomes += 1
                self._set_state(rec, State.PENDING)
            self._count_error("engine_unavailable")
        except OutriderError as exc:
            if isinstance(exc, EngineRefused) and exc.reason == "rejected":
                rec.path = None  # fetch again next time: the files may have been the problem
            if self._current(rec, gen):
                self._failed(rec, exc)
            self._count_error("engine_refused" if isinstance(exc, EngineRefused) else "fetch")

    async def _unload(self, rec: Adapter) -> None:
        """Unload one retracted adapter that outrider loaded."""
        if rec.loaded_path is None:
            self._forget(rec)
            return
        self._set_state(rec, State.UNLOADING)
        started = trio.current_time()
        try:
            await self.lora.unload(self.engine, rec.name)
        except EngineRefused as exc:
            if exc.reason != "unknown_adapter":
                self._failed(rec, exc, state=State.UNLOADING)
                self._count_error("engine_refused")
                return
        except EngineUnavailable as exc:
            rec.error = exc
            rec.outcomes += 1
            self._count_error("engine_unavailable")
            return
        if self.metrics is not None:
            self.metrics.adapter_unload_seconds.observe(trio.current_time() - started)
        rec.loaded_path = None
        log.info("adapter %s unloaded", rec.name)
        if rec.desired:  # declared again while it was being unloaded
            self._set_state(rec, State.PENDING)
            self.wake()
        else:
            self._forget(rec)

    # ----- state changes ----------------------------------------------------------------------------------------

    def _current(self, rec: Adapter, gen: int) -> bool:
        return self._adapters.get(rec.name) is rec and rec.desired and rec.generation == gen

    def _loaded(self, rec: Adapter, gen: int, path: str, started: float, *, adopted: bool) -> None:
        rec.loaded_path = path  # the engine holds it from our path, whatever happened to the declaration meanwhile
        if not self._current(rec, gen):
            self.wake()
            return
        rec.failures = 0
        rec.error = None
        rec.retry_at = 0.0
        rec.outcomes += 1
        rec.loaded_at = time.time()
        self._set_state(rec, State.LOADED)
        if self.metrics is not None and not adopted:
            self.metrics.adapter_load_seconds.observe(trio.current_time() - started)
        log.info("adapter %s %s from %s", rec.name, "found loaded" if adopted else "loaded", path)

    def _failed(self, rec: Adapter, exc: OutriderError, state: State = State.FAILED) -> None:
        rec.failures += 1
        rec.error = exc
        rec.outcomes += 1
        backoff = Backoff(self.interval, BACKOFF_MAX, jitter=UNJITTERED).delay(rec.failures)
        rec.retry_at = trio.current_time() + backoff
        self._set_state(rec, state)
        log.warning(
            "adapter %s: attempt %d failed (%s); retrying in %.1fs", rec.name, rec.attempts, exc.message, backoff
        )
        self.wake()  # so the loop's sleep accounts for the new retry time

    def _forget(self, rec: Adapter) -> None:
        if self._adapters.get(rec.name) is rec:
            del self._adapters[rec.name]
            lock = self._locks.get(rec.name)
            if lock is not None and not lock.locked():
                del self._locks[rec.name]
            if self._nursery is not None and not rec.keep_files:
                if rec.downloaded and rec.path is not None:
                    self._nursery.start_soon(self._delete_download, rec.name, rec.path)
                if rec.superseded is not None:  # replaced, then retracted before the new source was fetched
                    self._nursery.start_soon(self._delete_download, rec.name, rec.superseded)
        self._changed_now()

    async def _delete_download(self, name: str, path: Path) -> None:
        """Delete what outrider downloaded for a forgotten adapter, unless it was declared again meanwhile and uses
        it. Under the name's lock, so a new fetch into the same directory waits for the delete."""
        async with self._lock(name):
            rec = self._adapters.get(name)
            if rec is not None and rec.path == path:
                return
            await self._remove_files(name, path)

    async def _remove_files(self, name: str, path: Path) -> None:
        """Remove the files outrider's record in `path` lists (transfer/ownership.py): never a file it did not
        write, nor a directory another declared adapter uses."""
        for other in self._adapters.values():
            if other.name != name and path in (other.dest, other.path):
                log.info("adapter %s: keeping %s, which adapter %s uses", name, path, other.name)
                return
        try:
            # Confined again, symlinks resolved: a link swapped in since the download must not aim the delete
            # elsewhere.
            real = await trio.to_thread.run_sync(confine_any, self.roots, str(path), "output_dir")
            removal = await trio.to_thread.run_sync(ownership.remove_download, real)
        except (OSError, OutriderError) as exc:
            log.warning("adapter %s: could not delete its downloaded files at %s: %s", name, path, exc)
            self._count_error("cleanup")
            return
        if not removal.recorded:
            log.info("adapter %s: %s holds no download record of outrider's; nothing deleted", name, path)
        elif removal.directory_removed:
            log.info("adapter %s: deleted its downloaded files at %s", name, path)
        else:
            log.info(
                "adapter %s: deleted its %d downloaded files at %s; other files keep the directory",
                name,
                removal.files,
                path,
            )

    def _set_state(self, rec: Adapter, state: State) -> None:
        if rec.state != state:
            rec.state = state
            rec.updated_at = time.time()
            self._changed_now()

    def _changed_now(self, *, wake: bool = False) -> None:
        self._changed.set()
        self._changed = trio.Event()
        self._update_gauges()
        if wake:
            self.wake()

    def _update_gauges(self) -> None:
        if self.metrics is None:
            return
        counts = dict.fromkeys(State, 0)
        for rec in self._adapters.values():
            counts[rec.state] += 1
        for state, count in counts.items():
            self.metrics.adapters.labels(str(state)).set(count)

    def _count_error(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.adapter_reconcile_errors.labels(reason).inc()
