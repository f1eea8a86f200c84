"""CPU time of the relay's per-send parsing of the ``ksmpv3.send`` frames bench/relay.py
sends (one 200-byte ciphertext, fresh message id and idempotency key per frame), without
sockets, storage or an event loop: ``send_frame``, the one-pass decode the relay's
dispatch tries first (``parse_frame`` then ``parse_send`` for a checkout from before it).

    python bench/frame_parse.py [--frames 20000] [--repeat 7] [--src OTHER_CHECKOUT/src]

``--src`` measures another checkout's code with this script (an A/B of two checkouts:
run it alternately from one shell, each with that checkout's own Python). The figure
is CPU time of this process (``time.process_time``), not wall time, so that other
processes on a busy machine weigh on it less: the median µs per frame over
``--repeat`` passes, and the fastest pass.
"""

from __future__ import annotations

import argparse
import base64
import secrets
import statistics
import sys
import time
from pathlib import Path


def frames(n: int) -> list[str]:
    ct = base64.b64encode(secrets.token_bytes(200)).decode()
    return [
        '{"event":"ksmpv3.send","data":{"conversationId":"dm:u-alice:u-bob","messageId":'
        f'"m{i}-p0","idempotencyKey":"k{i}-p0","recipientUserId":"u-bob",'
        '"contentType":"text","clientCreatedAtMs":1765000000000,"ciphertexts":'
        f'[{{"userId":"u-bob","deviceId":"d1","ciphertext":"{ct}"}}]}}}}'
        for i in range(n)
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--src", type=Path, default=Path(__file__).resolve().parents[1] / "src")
    args = ap.parse_args()
    sys.path.insert(0, str(args.src.resolve()))
    from sottovoce.protocol.events import parse_frame
    from sottovoce.server import sendview

    texts = frames(args.frames)
    per_frame: list[float] = []
    # What the relay's dispatch runs: send_frame (one typed decode), or, in a checkout
    # from before it, parse_frame then parse_send.
    one_pass = getattr(sendview, "send_frame", None)
    for _ in range(args.repeat):
        t0 = time.process_time()
        if one_pass is not None:
            for text in texts:
                if one_pass(text) is None:
                    raise SystemExit("send_frame did not take a bench frame")
        else:
            for text in texts:
                _, _, data = parse_frame(text)
                sendview.parse_send(data)
        per_frame.append(1e6 * (time.process_time() - t0) / len(texts))
    what = "send_frame" if one_pass is not None else "parse_frame + parse_send"
    print(f"src: {args.src}")
    print(f"{what}: median {statistics.median(per_frame):.2f} µs/frame, "
          f"fastest {min(per_frame):.2f} µs/frame ({args.repeat} passes of {len(texts)} frames, "
          "CPU time)")


if __name__ == "__main__":
    main()
