"""Prints numbered lines to stdout and stderr without pause, then ends (or fails with a last error)."""

import argparse
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("--lines", type=int, default=100_000)
parser.add_argument("--fail", type=int, default=0)
args, _ = parser.parse_known_args()
for i in range(args.lines):
    print(f"out line {i:09d} " + "x" * 40)
    print(f"err line {i:09d} " + "y" * 40, file=sys.stderr)
    if i % 5000 == 4999:
        sys.stdout.flush()
        sys.stderr.flush()
        time.sleep(0.02)  # the agent looks at the files between bursts
print(f"out line {args.lines:09d} the end", flush=True)
if args.fail:
    raise ValueError("the last words after all that output")
