"""The caption command: expand inputs, skip what is done, caption the rest N at a time."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from omega_vlm.caption.client import CaptionClient, Options, TransientError
from omega_vlm.caption.output import Format, OutputBusy, RowWriter, lock_output, read_progress, repair_torn_tail
from omega_vlm.caption.reach import ServerUnreachable, check_server
from omega_vlm.caption.sources import ImageSource, collect
from shared.exit_codes import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE

DEFAULT_PROMPT = "Describe this image in one detailed sentence."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="image files, folders, globs, http(s) URLs, or manifest files listing them",
    )
    parser.add_argument("--out", required=True, type=Path, help="output file (appended to; reruns resume)")
    parser.add_argument(
        "--server",
        default=os.environ.get("OMEGA_SERVER", "http://localhost:8000"),
        help="service URL [env OMEGA_SERVER]",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("OMEGA_API_KEY") or os.environ.get("API_KEY"),
        help="bearer key [env OMEGA_API_KEY or API_KEY]",
    )
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--model", default=None, help="model name (default: the server's)")
    parser.add_argument("--concurrency", type=int, default=8, help="images in flight")
    parser.add_argument("--recursive", action="store_true", help="descend into sub-folders (and ** in globs)")
    parser.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    parser.add_argument(
        "--timeout",
        type=float,
        default=3600.0,
        help="seconds one image's job may take from submit to result; then it is canceled (default 3600)",
    )


@dataclass
class Tally:
    done: int = 0
    failed: int = 0
    skipped: int = 0
    started: float = field(default_factory=time.monotonic)

    def rate(self) -> float:
        return (self.done + self.failed) / max(1e-9, time.monotonic() - self.started)


class Progress:
    """A tqdm bar on a terminal; elsewhere a plain line every few seconds (log-friendly)."""

    def __init__(self, total: int, tally: Tally) -> None:
        self.total = total
        self.tally = tally
        self.bar = tqdm(total=total, unit="img", dynamic_ncols=True) if sys.stderr.isatty() else None
        self._last_line = 0.0

    def advance(self) -> None:
        t = self.tally
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(failed=t.failed)
            return
        now = time.monotonic()
        finished = t.done + t.failed
        if now - self._last_line >= 5 or finished == self.total:
            self._last_line = now
            rate = t.rate()
            eta = (self.total - finished) / rate if rate > 0 else float("inf")
            print(
                f"[caption] {finished}/{self.total} done, {t.failed} failed, {rate:.2f} img/s, ETA {eta:.0f}s",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


async def _caption_all(
    todo: list[ImageSource],
    attempts: dict[str, int],
    client: CaptionClient,
    writer: RowWriter,
    tally: Tally,
    concurrency: int,
) -> None:
    progress = Progress(len(todo), tally)
    queue: asyncio.Queue[ImageSource] = asyncio.Queue()
    for source in todo:
        queue.put_nowait(source)

    async def lane() -> None:
        while not queue.empty():
            source = queue.get_nowait()
            row: dict[str, Any]
            try:
                row = await client.caption(source, attempts.get(source.key, 0))
            except TransientError as exc:
                row = {
                    "image": source.key,
                    "error": {"message": str(exc), "type": "unavailable", "code": None},
                    "retryable": True,
                }
            except OSError as exc:  # an unreadable local file
                row = {
                    "image": source.key,
                    "error": {"message": f"cannot read the file: {exc.strerror}", "type": "read_error", "code": None},
                    "retryable": False,
                }
            writer.write(row)
            if "caption" in row:
                tally.done += 1
            else:
                tally.failed += 1
            progress.advance()

    try:
        await asyncio.gather(*(lane() for _ in range(max(1, concurrency))))
    finally:
        progress.close()


def run(args: argparse.Namespace) -> int:
    try:
        check_server(args.server)
        sources = collect(args.paths, args.recursive)
        lock = lock_output(args.out)
    except (FileNotFoundError, UnicodeDecodeError, ServerUnreachable, OutputBusy) as exc:
        print(f"omega-vlm caption: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return _run_locked(args, sources)
    finally:
        lock.close()


def _run_locked(args: argparse.Namespace, sources: list[ImageSource]) -> int:
    fmt: Format = args.format
    dropped = repair_torn_tail(args.out, fmt)
    if dropped:
        print(f"[caption] repaired a torn last row in {args.out} ({dropped} bytes)", file=sys.stderr)
    finished, attempts = read_progress(args.out, fmt)
    todo = [s for s in sources if s.key not in finished]
    tally = Tally(skipped=len(sources) - len(todo))
    options = Options(
        server=args.server,
        api_key=args.api_key,
        prompt=args.prompt,
        max_tokens=args.max_tokens,
        model=args.model,
        deadline_s=args.timeout,
    )
    writer = RowWriter(args.out, fmt)
    client = CaptionClient(options, args.concurrency)

    async def main() -> None:
        try:
            await _caption_all(todo, attempts, client, writer, tally, args.concurrency)
        finally:
            await client.close()

    interrupted = False
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        interrupted = True
    finally:
        writer.close()
    print(
        f"[caption] done={tally.done} failed={tally.failed} skipped={tally.skipped} "
        f"retries={client.retries} rate={tally.rate():.2f} images/s"
        f"{' (interrupted)' if interrupted else ''}",
        file=sys.stderr,
        flush=True,
    )
    if interrupted:
        return EXIT_INTERRUPTED
    return EXIT_FAILED if tally.failed else EXIT_OK
