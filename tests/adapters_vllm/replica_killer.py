"""Kill the replica that generates: a watcher process for the replica-fault test.

``python tests/adapters_vllm/replica_killer.py --after N URL=PID [URL=PID ...]`` reads each
replica's generated-token counter, prints ``ready``, then polls the counters and SIGKILLs the
server (``PID``) of the first replica whose counter has risen by ``N`` tokens; it prints one JSON
line (``index``, ``generated`` — the counter's rise at the last read before the kill — and
``at``, the kill's ``time.monotonic()``) and exits.

It is a process of its own so that the kill is timed by the server's progress alone: in the test's
process a streaming LangGraph agent holds the GIL for most of every chunk, and a watcher thread
there read the counters seconds late (a local run: the whole 3,000-token turn was sent before the kill).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

from adapters.vllm.tools.server import scrape_metrics

COUNTER = "vllm:generation_tokens_total"


def _generated(url: str) -> float | None:
    try:
        return scrape_metrics(url).get(COUNTER, 0.0)
    except OSError:
        return None


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--after", type=int, required=True, help="tokens generated before the kill")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("replicas", nargs="+", help="URL=PID of each replica's server")
    args = parser.parse_args()
    replicas = [(url, int(pid)) for url, _, pid in (r.rpartition("=") for r in args.replicas)]
    before = [_generated(url) for url, _ in replicas]
    if any(b is None for b in before):
        print(json.dumps({"error": f"a replica's metrics cannot be read: {before}"}), flush=True)
        return 1
    print("ready", flush=True)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        for index, ((url, pid), then) in enumerate(zip(replicas, before, strict=True)):
            now = _generated(url)
            if now is not None and then is not None and now - then >= args.after:
                at = time.monotonic()  # system-wide on Linux: the test reads the same clock
                os.kill(pid, signal.SIGKILL)
                print(json.dumps({"index": index, "generated": now - then, "at": at}), flush=True)
                return 0
        time.sleep(0.01)
    print(json.dumps({"error": f"no replica generated {args.after} tokens"}), flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())
