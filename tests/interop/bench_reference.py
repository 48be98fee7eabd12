#!/usr/bin/env python3
"""Throughput of the reference TEJ v1 implementation (tej-protoc 0.2.4) on loopback.

Both ends are the reference: a TPServer that counts received frames/bytes and
a TPClient socket sending pre-built frames with protocol.send(sock, data, 60).
By default the server runs in a child process so the two ends do not share a
GIL (--in-process puts it on a thread of this process instead).

Workloads (one JSON line each on stdout):
  file_16mib: N frames each carrying one 16 MiB file (--files, default 8)
      {"workload":"file_16mib","frames":N,"bytes":B,"seconds":T,"mb_per_s":X,...}
  msg_128b:   M frames with a 128-byte message (--messages, default 50000),
              sending stops early after --seconds (default 10)
      {"workload":"msg_128b","frames":M,"seconds":T,"frames_per_s":Y,...}

T runs from just before the first send to the moment the server callback saw
the last frame (CLOCK_MONOTONIC, comparable across processes). "bytes" counts
payload (file data + message), not frame headers. mb_per_s is 10^6 bytes/s;
mib_per_s is also given.
"""

import argparse
import json
import multiprocessing
import queue
import socket
import sys
import threading
import time

FILE_SIZE = 16 * 1024 * 1024
MSG_SIZE = 128
SEND_TIMEOUT = 60
INSTALL_HINT = ("tej-protoc is not installed: run "
                "python3 -m pip install -r tests/interop/requirements.txt")


def now():
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def serve(reports, verbose):
    """Run a counting TPServer; put ("port", P) then one ("conn", stats) per connection."""
    from tej_protoc import callbacks, server
    from tej_protoc.logger import Log
    Log.enabled = verbose

    class Counting(callbacks.ResponseCallback):
        def connected(self, client_sock):
            self.frames = 0
            self.bytes = 0
            self.first = None
            self.last = None

        def received(self, files, message):
            t = now()
            if self.first is None:
                self.first = t
            self.frames += 1
            self.bytes += sum(len(f.data) for f in files) + (len(message) if message else 0)
            self.last = t

        def disconnected(self):
            reports.put(("conn", {"frames": self.frames, "bytes": self.bytes,
                                  "first": self.first, "last": self.last}))

    srv = server.TPServer("127.0.0.1", 0, Counting)
    reports.put(("port", srv.__server__.getsockname()[1]))
    srv.listen(run_background=False)


def _serve_child(reports, verbose):
    try:
        serve(reports, verbose)
    except ImportError:
        reports.put(("error", INSTALL_HINT))


def run_workload(port, reports, frame, count, seconds_cap, wait_cap):
    """Send `frame` up to `count` times (stop after seconds_cap); return stats."""
    from tej_protoc import protocol
    from tej_protoc.client import TPClient
    from tej_protoc.callbacks import ResponseCallback

    tpc = TPClient("127.0.0.1", port, ResponseCallback)  # not listening: send only
    sock = tpc.get_client()
    sent = 0
    t0 = now()
    deadline = t0 + seconds_cap if seconds_cap else None
    while sent < count:
        protocol.send(sock, frame, SEND_TIMEOUT)
        sent += 1
        if deadline is not None and (sent & 63) == 0 and now() >= deadline:
            break
    t_sent = now()
    # Orderly close: the server reads everything, sees EOF, reports the connection.
    sock.shutdown(socket.SHUT_WR)
    try:
        kind, stats = reports.get(timeout=wait_cap)
    except queue.Empty:
        raise SystemExit(f"server did not report within {wait_cap}s")
    sock.close()
    if kind != "conn":
        raise SystemExit(f"unexpected server report {kind}: {stats}")
    if stats["frames"] != sent:
        raise SystemExit(f"server received {stats['frames']} frames, client sent {sent}")
    return sent, t0, t_sent, stats


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=8, help="frames in file_16mib (default 8)")
    ap.add_argument("--messages", type=int, default=50000, help="frames in msg_128b (default 50000)")
    ap.add_argument("--seconds", type=float, default=10.0,
                    help="cap on sending time for msg_128b (default 10)")
    ap.add_argument("--in-process", action="store_true",
                    help="run the server on a thread of this process (shares the GIL)")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()

    try:
        from tej_protoc import protocol
        from tej_protoc.logger import Log
    except ImportError:
        sys.stderr.write(INSTALL_HINT + "\n")
        sys.exit(3)
    Log.enabled = args.verbose

    if args.in_process:
        reports = queue.Queue()
        threading.Thread(target=serve, args=(reports, args.verbose), daemon=True).start()
        child = None
    else:
        ctx = multiprocessing.get_context("spawn")
        reports = ctx.Queue()
        child = ctx.Process(target=_serve_child, args=(reports, args.verbose), daemon=True)
        child.start()
    kind, port = reports.get(timeout=30)
    if kind != "port":
        sys.stderr.write(f"{port}\n")
        sys.exit(3)

    mode = "in_process" if args.in_process else "two_processes"
    try:
        # (a) 16 MiB files
        frame = protocol.BytesBuilder(1).add_file("blob.bin", b"\xa5" * FILE_SIZE).bytes()
        sent, t0, _, st = run_workload(port, reports, frame, args.files, None, 600)
        secs = st["last"] - t0
        print(json.dumps({"workload": "file_16mib", "frames": sent, "bytes": st["bytes"],
                          "seconds": round(secs, 4),
                          "mb_per_s": round(st["bytes"] / 1e6 / secs, 1),
                          "mib_per_s": round(st["bytes"] / 1048576 / secs, 1),
                          "mode": mode}, separators=(",", ":")), flush=True)

        # (b) 128-byte messages
        frame = protocol.BytesBuilder(1).set_message(b"m" * MSG_SIZE).bytes()
        sent, t0, t_sent, st = run_workload(port, reports, frame, args.messages,
                                            args.seconds, max(60.0, 6 * args.seconds))
        secs = st["last"] - t0
        print(json.dumps({"workload": "msg_128b", "frames": sent, "seconds": round(secs, 4),
                          "frames_per_s": round(sent / secs, 1),
                          "send_seconds": round(t_sent - t0, 4),
                          "mode": mode}, separators=(",", ":")), flush=True)
    finally:
        if child is not None:
            child.terminate()
            child.join(5)


if __name__ == "__main__":
    main()
