"""`outrider download SOURCE DEST`: one download from the command line, with a progress display.

Also takes the AIBrix downloader's spellings: `--model-uri`, `--local-dir`, `--model-name` (files land in
`<local-dir>/<model-name>/`), `--enable-progress-bar`, `--download-extra-config '<json>'`.
Exit status: 0 when every file is verified and in place; 2 with one line for bad input (flags, source, filters);
1 with one line when the download fails; 130 when interrupted (run the same command again to resume).
The destination is the operator's choice here, so it is not confined to --model-root as requests are.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

import trio
from tqdm import tqdm

from outrider.errors import InvalidRequest, OutriderError
from outrider.transfer import download
from outrider.transfer.engine import Transfer, TransferOptions
from outrider.transfer.opener import SourceOpener, build_opener
from outrider.transfer.plan import Filters
from outrider.transfer.progress import Progress
from outrider.transfer.settings import DownloadSettings

# A TTY bar redraws often enough to look live; plain lines (logs) come rarely enough not to flood them.
BAR_INTERVAL = 0.2
LINE_INTERVAL = 10.0
# Columns for a terminal that reports no size (a pseudo-terminal nobody sized): tqdm would draw nothing there.
FALLBACK_COLUMNS = 80


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", nargs="?", help="s3://, obs://, tos://, pvc://, hf:// or a Hugging Face org/name")
    parser.add_argument("dest", nargs="?", help="directory to download into")
    # Kthena's downloader (ModelBooster's init container): -s SOURCE -o OUTPUT_DIR -w WORKERS -c CONFIG.
    parser.add_argument("-s", "--source", dest="kthena_source", metavar="SOURCE", help="Kthena spelling of SOURCE")
    parser.add_argument("-o", "--output-dir", dest="output_dir", metavar="DIR", help="Kthena spelling of DEST")
    parser.add_argument("--model-uri", dest="model_uri", help="AIBrix spelling of SOURCE")
    parser.add_argument("--local-dir", dest="local_dir", help="AIBrix: parent directory (with --model-name)")
    parser.add_argument("--model-name", dest="model_name", help="AIBrix: files land in <local-dir>/<model-name>/")
    parser.add_argument(
        "--download-extra-config",
        "-c",
        "--config",
        dest="config",
        help="JSON object for the store: credentials, endpoint, revision (prefer environment variables for secrets)",
    )
    parser.add_argument("--include", action="append", default=[], help="glob of files to keep (repeatable)")
    parser.add_argument("--exclude", action="append", default=[], help="glob of files to skip (repeatable)")
    parser.add_argument(
        "--enable-progress-bar",
        dest="progress_bar",
        action="store_true",
        help="AIBrix spelling; the bar is shown whenever stderr is a terminal",
    )


@dataclasses.dataclass(frozen=True)
class Command:
    source: str
    dest: Path
    config: Mapping[str, object] | None
    filters: Filters
    settings: DownloadSettings


def parse(args: argparse.Namespace, settings: DownloadSettings) -> Command:
    """The command's inputs (its settings are already checked), or InvalidRequest with one line for the operator."""
    sources = [s for s in (args.source, args.kthena_source, args.model_uri) if s]
    if len(sources) > 1:
        raise InvalidRequest("give one of SOURCE, -s/--source or --model-uri")
    if not sources:
        raise InvalidRequest("a SOURCE (or -s/--source, or --model-uri) is required")
    source = sources[0]
    aibrix_dest = args.local_dir is not None or args.model_name is not None
    if sum(bool(d) for d in (args.dest, args.output_dir, aibrix_dest)) > 1:
        raise InvalidRequest("give one of DEST, -o/--output-dir or --local-dir/--model-name")
    if args.dest or args.output_dir:
        dest = Path(os.path.expanduser(args.dest or args.output_dir))
    elif aibrix_dest:
        base = args.local_dir or settings.model_root
        name = args.model_name or source.rstrip("/").rsplit("/", 1)[-1]
        if not name or "/" in name or name in (".", ".."):
            raise InvalidRequest(f"--model-name must be one directory name, got {name!r}")
        dest = Path(base) / name
    else:
        raise InvalidRequest("a DEST (or --local-dir and --model-name) is required")
    config: Any = None
    if args.config:
        try:
            config = json.loads(args.config)
        except ValueError:
            raise InvalidRequest("--download-extra-config must be a JSON object") from None
        if not isinstance(config, dict):
            raise InvalidRequest("--download-extra-config must be a JSON object")
    # The operator is the caller here: the endpoint in their own config is theirs to choose.
    settings = dataclasses.replace(settings, allow_request_endpoints=True)
    filters = Filters(settings.allow_suffixes, tuple(args.include), tuple(args.exclude))
    return Command(source, dest.absolute(), config, filters, settings)


def main(args: argparse.Namespace, settings: DownloadSettings, opener: SourceOpener | None) -> int:
    try:
        command = parse(args, settings)
    except InvalidRequest as exc:
        print(f"outrider: error: {exc}", file=sys.stderr)
        return 2
    try:
        return trio.run(_download, command, opener or build_opener(command.settings), sys.stderr)
    except KeyboardInterrupt:
        print("\noutrider: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


async def _download(command: Command, opener: SourceOpener, out: TextIO) -> int:
    settings = command.settings
    stop = threading.Event()
    try:
        source = await trio.to_thread.run_sync(opener, command.source, command.config)
    except OutriderError as exc:
        return _fail(exc, out)
    try:
        prepared = await trio.to_thread.run_sync(
            download.prepare, source, command.filters, command.dest, settings.chunk_size
        )
    except OutriderError as exc:
        await trio.to_thread.run_sync(source.close)
        return _fail(exc, out)
    progress = download.progress_for(prepared, Progress())
    transfer = Transfer(
        TransferOptions(
            workers=settings.workers, chunk_size=settings.chunk_size, verify_checksums=settings.verify_checksums
        )
    )
    error: OutriderError | None = None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_report, progress, out)
            try:
                await download.run(prepared, transfer, progress, stop)
            except OutriderError as exc:  # caught here, not raised through the nursery as an exception group
                error = exc
            finally:
                progress.finished = time.monotonic()
                nursery.cancel_scope.cancel()
    finally:
        stop.set()
        await trio.to_thread.run_sync(source.close)
    if error is not None:
        return _fail(error, out)
    fetched = len([f for f in progress.files.values() if f.state == "published"])
    print(
        f"outrider: {len(progress.files)} files verified in {command.dest} "
        f"({fetched} fetched, {_size(progress.fetched)} in {progress.elapsed():.1f}s)",
        file=out,
    )
    return 0


def _fail(exc: OutriderError, out: TextIO) -> int:
    print(f"\noutrider: error: {exc.message}", file=out)
    return 2 if exc.status == 400 else 1


async def _report(progress: Progress, out: TextIO) -> None:
    """Show progress until cancelled: a bar on a terminal, else a plain line now and then (a log keeps them)."""
    if not out.isatty():
        while True:
            await trio.sleep(LINE_INTERVAL)
            print(f"outrider: downloaded {_status(progress)}", file=out, flush=True)
    bar = _bar(progress, out)
    try:
        while True:
            await trio.sleep(BAR_INTERVAL)
            _advance(bar, progress)
    finally:
        _advance(bar, progress)  # the final state (or where it failed) stays on screen, its line ended
        bar.close()


def _bar(progress: Progress, out: TextIO) -> Any:
    """A tqdm bar over every planned byte: it fits the terminal's width, and says sizes and rates in binary units.

    smoothing=0: the rate is the mean over the run, as `Progress.rate` gives it, not a moving average of the last
    few redraws."""
    columns = _columns(out)
    return tqdm(
        total=progress.total,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=out,
        dynamic_ncols=columns is None,
        ncols=columns,
        smoothing=0,
    )


def _columns(out: TextIO) -> int | None:
    """None when the terminal reports its width (tqdm then follows it as it changes), else FALLBACK_COLUMNS."""
    try:
        return None if os.get_terminal_size(out.fileno()).columns > 0 else FALLBACK_COLUMNS
    except (OSError, ValueError):  # no file descriptor behind `out`, or not a terminal's
        return FALLBACK_COLUMNS


def _advance(bar: Any, progress: Progress) -> None:
    done = progress.done
    # Resumed and unchanged bytes are progress but no transfer: counted as `initial`, which tqdm leaves out of its
    # rate ((n - initial) / elapsed), they do not inflate the rate or shrink the ETA.
    bar.initial = done - progress.fetched
    bar.n = done
    # Another process writing the same directory (a shared cache): say whom this one waits for.
    bar.set_description_str(f"waiting for {progress.waiting_for}" if progress.waiting_for else "", refresh=False)
    bar.refresh()


def _status(progress: Progress) -> str:
    total, done = progress.total, progress.done
    fraction = done / total if total else 1.0
    eta = progress.eta()
    waiting = f" (waiting for {progress.waiting_for})" if progress.waiting_for else ""
    return (
        f"{fraction * 100:5.1f}% {_size(done)}/{_size(total)} {_size(progress.rate())}/s "
        f"ETA {'--:--' if eta is None else _clock(eta)}{waiting}"
    )


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60:d}:{rest % 60:02d}"
