"""`python -m workers.inference --bind 127.0.0.1:8081`: the local inference worker process.

Environment: PARTAGE_MODEL_CACHE (the catalog cache), HF_HUB_OFFLINE=1 (set here). It prints
`listening on http://host:port` once ready.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from types import FrameType


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.inference")
    parser.add_argument("--bind", default="127.0.0.1:8081", help="host:port (port 0: any free)")
    parser.add_argument("--max-adapters", type=int, default=4, help="resident adapters per base")
    parser.add_argument("--max-rank", type=int, default=64)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s inference %(message)s", stream=sys.stderr
    )
    from workers.inference.engine import LocalEngine
    from workers.inference.server import InferenceServer

    host, _, port = args.bind.rpartition(":")
    engine = LocalEngine(max_adapters=args.max_adapters, max_rank=args.max_rank)
    server = InferenceServer((host or "127.0.0.1", int(port)), engine)

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    bound_host, bound_port = str(server.server_address[0]), int(server.server_address[1])
    print(f"listening on http://{bound_host}:{bound_port}", flush=True)
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
