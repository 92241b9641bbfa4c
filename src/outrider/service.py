"""The supervisor: one root nursery holding the scrape loop and the HTTP server, and a clean shutdown.

Start-up order is explicit (`nursery.start`): the scraper is ready before the server accepts connections.
Shutdown: SIGTERM or SIGINT sets one event; hypercorn stops accepting, gives in-flight requests
`settings.shutdown_grace` seconds, then the nursery cancels every loop. Without launched engines the whole takes
well under 2 s; stopping launched engines adds at most --engine-stop-grace + 12 s (lifecycle/stops.py).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve
from prometheus_client import CollectorRegistry, generate_latest

from outrider import logs
from outrider.adapters.fetch import SharedFetches, VolumeFetcher
from outrider.adapters.file import AdaptersFileWatcher
from outrider.adapters.reconciler import Reconciler
from outrider.engines import get_engine_spec
from outrider.engines.client import EngineClient, auth_headers
from outrider.http.app import create_asgi
from outrider.lifecycle.options import LifecycleSettings
from outrider.lifecycle.records import EngineRecord
from outrider.lifecycle.supervisor import Supervisor
from outrider.metrics.concepts import profile_targets
from outrider.metrics.gie import AdapterLoraInfo, ProtocolRewrite
from outrider.metrics.modelclaim import ModelClaimCollector
from outrider.metrics.own import OwnMetrics
from outrider.metrics.page import ServedPage
from outrider.metrics.scraper import Scraper
from outrider.metrics.standardize import Rewriter
from outrider.runtime import Runtime
from outrider.settings import Settings
from outrider.target import EngineTarget, TargetKeeper
from outrider.transfer.jobs import JobManager
from outrider.transfer.opener import SourceOpener, build_opener
from outrider.transfer.pod_model import PodModel

log = logging.getLogger("outrider")


def build_runtime(
    settings: Settings, source_opener: SourceOpener | None = None, lifecycle: LifecycleSettings | None = None
) -> Runtime:
    """The live objects. `source_opener` turns download sources into Sources (default: the real stores; tests pass
    a local one). LoRA adapters that are not already on the shared volume are fetched by the same download jobs,
    and so are the artifacts of the engines outrider launches (`lifecycle`, default `settings.lifecycle`)."""
    spec = get_engine_spec(settings.engine)
    metrics = OwnMetrics(settings.engine)
    target = TargetKeeper(settings)
    gie = "gie" in settings.metrics_profiles
    rewriter = Rewriter(
        spec.metric_sources,
        profile_targets(settings.metrics_profiles, settings.metrics_prefix),
        protocol=ProtocolRewrite.for_engine(spec) if gie else None,
    )
    scraper = Scraper(
        url=settings.engine_metrics_url,
        interval=settings.scrape_interval,
        timeout=settings.scrape_timeout,
        max_age=settings.metrics_max_age,
        rewriter=rewriter,
        metrics=metrics,
        headers=auth_headers(settings.engine_api_key),
        follow=target.metrics_url,
    )
    downloads = JobManager(settings.downloads, source_opener or build_opener(settings.downloads), metrics.downloads)
    pod_model = PodModel(
        downloads,
        settings.downloads.model_root,
        settings.downloads.pod_model,
        settings.downloads.pod_model_dir,
        metrics.pod_model,
    )
    root = Path(settings.adapter_root)
    # A Kthena load's `output_dir` may also name a directory under the model root (its manifests use /models/...).
    # AIBrix's delegation mode lands under --aibrix-adapter-dir.
    write_roots = (
        (Path(settings.downloads.model_root), "--model-root"),
        (Path(settings.aibrix_adapter_dir), "--aibrix-adapter-dir"),
    )
    fetcher = VolumeFetcher(root, downloads.fetch, pvc_root=settings.downloads.pvc_root, write_roots=write_roots)
    reconciler = Reconciler(
        EngineClient(target.base_url, settings.engine_api_key),
        spec.lora,
        SharedFetches(fetcher),
        adapter_root=root,
        interval=settings.adapter_sync_interval,
        metrics=metrics,
        write_roots=write_roots,
    )
    lora_info = None
    if gie and spec.lora_info is None:  # the engine says nothing of its adapters: tell what outrider loaded in it
        lora_info = AdapterLoraInfo(lambda: [a.name for a in reconciler.adapters() if a.loaded_path is not None])
    watcher = None
    if settings.adapters_file:
        watcher = AdaptersFileWatcher(Path(settings.adapters_file), reconciler, settings.adapter_sync_interval)
    lifecycle = lifecycle if lifecycle is not None else settings.lifecycle
    modelclaim = None
    if "aibrix" in settings.metrics_profiles:  # AIBrix's ModelClaim dashboard reads these from the sidecar
        registry = CollectorRegistry()  # not described at registration: `runtime` is made below
        registry.register(ModelClaimCollector(lambda: runtime.engines))
        modelclaim = functools.partial(generate_latest, registry)
    runtime = Runtime(
        settings=settings,
        metrics=metrics,
        scraper=scraper,
        page=ServedPage(scraper, metrics, lora=lora_info, peer=modelclaim),
        target=target,
        downloads=downloads,
        pod_model=pod_model,
        adapters=reconciler,
        adapters_file=watcher,
    )
    if lifecycle is not None:
        api_key = settings.engine_api_key.get_secret_value() if settings.engine_api_key is not None else None
        runtime.engines = Supervisor(
            lifecycle,
            downloads,
            model_root=settings.downloads.model_root,
            api_key=api_key,
            metrics=metrics.engines,
            on_change=functools.partial(_follow_engine, runtime),
        )
    return runtime


def _follow_engine(runtime: Runtime, record: EngineRecord | None) -> None:
    """The supervisor's newest engine on its way or serving (None: none left) becomes the engine target's wish;
    the target's own task applies it (outrider/target.py)."""
    if record is None:
        runtime.target.follow(None)
        return
    assert runtime.engines is not None
    api = runtime.engines.api
    runtime.target.follow(
        EngineTarget(
            api.url(record.port, ""),
            api.url(record.port, runtime.settings.engine_metrics_path),
            record.model_name,
            launched=record.model_name,
        )
    )


def hypercorn_config(settings: Settings) -> Config:
    config = Config()
    host = settings.host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 address
    config.bind = [f"{host}:{settings.port}"]
    config.graceful_timeout = settings.shutdown_grace
    config.accesslog = None  # request logging is not free, and probes would flood it
    config.errorlog = logging.getLogger("hypercorn.error")
    return config


async def serve(
    settings: Settings,
    shutdown: trio.Event,
    *,
    source_opener: SourceOpener | None = None,
    lifecycle: LifecycleSettings | None = None,
    task_status: trio.TaskStatus[tuple[Runtime, list[str]]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run outrider until `shutdown` is set. Reports (runtime, bound URLs) once it accepts connections.

    `source_opener` turns download requests' sources into Sources (default: `build_opener(settings.downloads)`);
    `lifecycle` overrides the engine lifecycle's settings (default: `settings.lifecycle`, None while it is off)."""
    # Before any loop starts: a second outrider on a taken port must not adopt (or stop) the first one's engines,
    # nor start downloads, only to fail at the bind.
    await trio.to_thread.run_sync(check_bindable, settings.host, settings.port)
    runtime = build_runtime(settings, source_opener, lifecycle)
    app = create_asgi(runtime)
    # The httpx clients the runtime holds, closed however serve ends (a loop failing at start included), after
    # every loop using them has stopped.
    async with contextlib.AsyncExitStack() as clients, trio.open_nursery() as nursery:
        assert runtime.adapters is not None
        clients.push_async_callback(_shielded_close, runtime.adapters.engine.aclose)
        if runtime.engines is not None:
            clients.push_async_callback(_shielded_close, runtime.engines.api.aclose)
        await nursery.start(runtime.target.run)  # first: every other loop reads the engine target
        await nursery.start(runtime.scraper.run)
        assert runtime.downloads is not None and runtime.adapters is not None
        await nursery.start(runtime.downloads.run)
        if runtime.pod_model is not None:  # fetched in the background; GET /startup says how far it got
            await nursery.start(runtime.pod_model.run)
        if runtime.engines is not None:  # after downloads (activations fetch through them), before the server
            await nursery.start(runtime.engines.run)
        await nursery.start(runtime.adapters.run)
        if runtime.adapters_file is not None:
            await nursery.start(runtime.adapters_file.run)
        if settings.kv_events_endpoint is not None:
            from outrider.kvevents import build_indexer  # imported only when enabled: zmq and redis load on demand

            indexer = build_indexer(
                settings,
                runtime.metrics.registry,
                lambda: runtime.model,
                auth_headers(settings.engine_api_key),
                engine_base_url=runtime.target.base_url,  # the ranks are asked of the engine outrider follows
            )
            await nursery.start(indexer.run)
        binds: list[str] = await nursery.start(
            functools.partial(_serve_http, app, hypercorn_config(settings), shutdown, nursery.cancel_scope)
        )
        log.info(
            "outrider serving on %s; engine %s at %s (metrics %s)",
            ", ".join(binds),
            settings.engine,
            settings.engine_base_url,
            settings.engine_metrics_path,
        )
        task_status.started((runtime, binds))


async def _serve_http(
    app: object,
    config: Config,
    shutdown: trio.Event,
    scope: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    try:
        await hypercorn_serve(app, config, shutdown_trigger=shutdown.wait, task_status=task_status)  # type: ignore[arg-type]
    finally:
        scope.cancel()  # the server is done: stop every other loop too


async def _shielded_close(aclose: Callable[[], Awaitable[None]]) -> None:
    with trio.CancelScope(shield=True):  # a shutdown's cancellation must not cut the close short
        await aclose()


async def _main(settings: Settings, source_opener: SourceOpener | None = None) -> None:
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_on_signals, shutdown)
        await serve(settings, shutdown, source_opener=source_opener)
        nursery.cancel_scope.cancel()


async def _on_signals(shutdown: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("received %s, shutting down", signal.Signals(signum).name)
            shutdown.set()


def configure_logging(settings: Settings) -> None:
    """One event per line on stderr (see outrider.logs), with the settings' credentials registered for redaction."""
    logs.configure(settings.log_level, settings.log_format, sys.stderr)
    logs.REDACTOR.register(logs.secrets_in(settings), pinned=True)


def check_bindable(host: str, port: int) -> None:
    """Raise the OSError a listening socket on `host:port` would meet (EADDRINUSE for a taken port), as hypercorn
    binds it (SO_REUSEADDR). Port 0 (any free one) always binds. Blocking: it may resolve `host`."""
    if port == 0:
        return
    for family, kind, proto, _, address in socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM):
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)


def _only_os_error(exc: BaseException) -> OSError | None:
    """The OSError `exc` is, or the first of a group made of nothing else (trio's nurseries wrap what a task
    raised in an ExceptionGroup, also when it is one bind failure)."""
    if isinstance(exc, OSError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        matched, rest = exc.split(OSError)
        if matched is not None and rest is None:
            first: BaseException = matched
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            return first if isinstance(first, OSError) else None
    return None


def run(settings: Settings, source_opener: SourceOpener | None = None) -> int:
    configure_logging(settings)
    try:
        trio.run(_main, settings, source_opener)
    except BaseException as exc:
        failure = _only_os_error(exc)
        if failure is None:
            raise
        # Typically the port is taken: one line naming it, not a traceback, and a failing exit.
        log.error("cannot serve on %s:%s: %s", settings.host, settings.port, failure.strerror or failure)
        return 1
    log.info("outrider stopped")
    return 0
