"""A stand-in for ffmpeg where it is not installed (examples/media.py, the tests): what a media
job's command looks like from the outside.

    fake_ffmpeg.py -o OUT [--duration S] [--allocate-mb MB] [--burn [--exit-on-xcpu]]

Writes a banner and then `frame=N ... time=HH:MM:SS.cc ...` progress to stderr, each progress
line ended by a carriage return as ffmpeg's are, `progress=end` to stdout, and OUT at the end.
--allocate-mb first allocates that much (ffmpeg's "Cannot allocate memory" and exit 1 when it
cannot); --burn spins on the CPU instead of pacing itself; with --exit-on-xcpu it exits 255 on
SIGXCPU, as ffmpeg does, instead of dying of it.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

FPS = 25


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("-o", dest="output", required=True)
    parser.add_argument("--duration", type=float, default=0.5)
    parser.add_argument("--allocate-mb", type=int, default=0)
    parser.add_argument("--burn", action="store_true")
    parser.add_argument("--exit-on-xcpu", action="store_true")
    args = parser.parse_args()
    got: list[int] = []
    if args.exit_on_xcpu:
        signal.signal(signal.SIGXCPU, lambda sig, _frame: got.append(sig))
    print("ffmpeg version fake-6.1 Copyright (c) the Conveyor tests", file=sys.stderr)
    print("Input #0, lavfi, from 'testsrc':", file=sys.stderr)
    if args.allocate_mb:
        try:
            buffer = bytearray(args.allocate_mb * 2**20)
        except MemoryError:
            print("Error while allocating frame buffer: Cannot allocate memory", file=sys.stderr)
            return 1
        del buffer
    frames = int(args.duration * FPS)
    frame = 0
    while args.burn or frame < frames:
        frame += 1
        t = frame / FPS
        stamp = f"{int(t // 3600):02d}:{int(t // 60 % 60):02d}:{t % 60:05.2f}"
        print(f"frame={frame:5d} fps={FPS} q=28.0 time={stamp} speed=1x", end="\r", file=sys.stderr)
        if args.burn:
            deadline = time.process_time() + 0.05
            while time.process_time() < deadline and not got:
                pass
        else:
            time.sleep(1 / FPS)
        if got:
            print(f"\nExiting normally, received signal {got[0]}.", file=sys.stderr)
            return 255
    print(file=sys.stderr)
    with open(args.output, "wb") as out:
        out.write(b"\x00" * 1024)
    print("progress=end", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
