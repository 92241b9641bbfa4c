"""The download command's progress display: a bar on a terminal, plain lines elsewhere, rates of this run only."""

from __future__ import annotations

import io

import pytest
import trio

from outrider import download_cmd
from outrider.transfer.progress import Progress

MIB = 1024 * 1024


class Terminal(io.StringIO):
    """What the display writes to a terminal; it reports no size, as a pseudo-terminal nobody sized does."""

    def isatty(self) -> bool:
        return True


def half_done() -> Progress:
    """One file of 8 MiB already on disk (unchanged), one of 8 MiB with 4 MiB fetched in this run."""
    progress = Progress()
    progress.add_file("kept.bin", 8 * MIB, 8 * MIB, "unchanged")
    fetching = progress.add_file("new.bin", 8 * MIB)
    progress.add(fetching, 4 * MIB)
    return progress


async def shown(progress: Progress, out: io.StringIO, seconds: float) -> str:
    with trio.move_on_after(seconds):
        await download_cmd._report(progress, out)
    return out.getvalue()


async def test_a_terminal_gets_a_bar_redrawn_in_place_and_left_with_its_line_ended() -> None:
    text = await shown(half_done(), Terminal(), 0.5)
    frames = text.split("\r")[1:]
    assert len(frames) >= 2 and text.endswith("\n") and text.count("\n") == 1
    assert all(len(frame.rstrip("\n")) <= download_cmd.FALLBACK_COLUMNS for frame in frames)
    assert " 75%|" in frames[-1] and "12.0M/16.0M" in frames[-1]


async def test_bytes_not_fetched_in_this_run_count_as_done_but_not_in_the_rate() -> None:
    progress = Progress()
    progress.add_file("kept.bin", 8 * MIB, 8 * MIB, "unchanged")
    resumed = progress.add_file("resumed.bin", 8 * MIB)
    resumed.done = 4 * MIB  # as the engine sets it when a file resumes from its manifest
    last = (await shown(progress, Terminal(), 0.5)).split("\r")[-1]
    assert "12.0M/16.0M" in last and "?B/s" in last  # nothing fetched yet: no rate to tell, no ETA


async def test_elsewhere_plain_lines_come_now_and_then(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(download_cmd, "LINE_INTERVAL", 0.1)
    lines = (await shown(half_done(), io.StringIO(), 0.35)).splitlines()
    assert len(lines) >= 2
    assert all(line.startswith("outrider: downloaded  75.0% 12.0 MiB/16.0 MiB ") for line in lines)
    assert "\r" not in "".join(lines)


async def test_a_download_waiting_for_another_process_says_whom_it_waits_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(download_cmd, "LINE_INTERVAL", 0.1)
    progress = half_done()
    progress.wait_for("pid 41 on node-a")
    assert "waiting for pid 41 on node-a" in (await shown(progress, Terminal(), 0.5)).split("\r")[-1]
    assert (await shown(progress, io.StringIO(), 0.25)).splitlines()[0].endswith("(waiting for pid 41 on node-a)")
    progress.wait_for(None)
    assert "waiting" not in (await shown(progress, Terminal(), 0.5)).split("\r")[-1]
