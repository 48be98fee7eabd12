#!/usr/bin/env python3
"""Interop peer backed by the reference TEJ v1 implementation (tej-protoc 0.2.4).

Plays either role, driven by flags, and reports what happens as one JSON
object per line on stdout (compact separators, flushed after every line), so
a Rust test can drive it. Everything else (the reference's logger, its stray
print() on an invalid start bit, thread tracebacks) goes to stderr.

    peer.py server [--echo] [--greet TEXT] [--timeout SECS] [--verbose]
    peer.py client --port P --spec JSON [--expect N] [--ping-interval SECS]
                   [--wait SECS] [--ignore-pings] [--ack-upto SEQ] [--verbose]
    peer.py check

Frame records (events "sent", "received", "ping"):
    {"event":..., "status":S, "version":V,
     "files":[{"name":NAME,"size":N,"sha256":HEX}],
     "message_len":N, "message_is_none":BOOL, "message_sha256":HEX,
     "message_text":STR_OR_NULL}

Exit codes: 0 ok, 1 failure (timeout, connect/send error), 2 bad usage or
spec, 3 tej-protoc not installed.  See tests/interop/REFERENCE_NOTES.md.
"""

import argparse
import hashlib
import json
import random
import socket
import ssl
import sys
import threading
import time

# The JSON event stream owns the real stdout. The reference prints to stdout
# itself ("Invalid starting bit. Received: 0"), so route print() to stderr.
_OUT = sys.stdout
sys.stdout = sys.stderr
_OUT_LOCK = threading.Lock()

SEND_TIMEOUT = 60  # seconds; protocol.send only sends completely with a timeout
MAX_TEXT = 200     # message_text is only filled in for messages up to this size
VERBOSE = False

INSTALL_HINT = ("tej-protoc is not installed: run "
                "python3 -m pip install -r tests/interop/requirements.txt")

try:
    from tej_protoc import callbacks, client, exceptions, ping, protocol, server
    from tej_protoc.logger import Log
except ImportError:
    sys.stderr.write(INSTALL_HINT + "\n")
    sys.stderr.flush()
    sys.exit(3)


def _exit(code):
    """Flush and leave without waiting for the reference's non-daemon threads."""
    import os
    try:
        with _OUT_LOCK:
            _OUT.flush()
    except (OSError, ValueError):
        pass
    sys.stderr.flush()
    os._exit(code)


def emit(obj):
    line = json.dumps(obj, separators=(",", ":"))
    with _OUT_LOCK:
        try:
            _OUT.write(line + "\n")
            _OUT.flush()
        except (OSError, ValueError):
            pass  # reader went away; nothing useful to do


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def frame_record(event, status, version, files, message):
    """files: list of (name, bytes); message: None or non-empty bytes."""
    if message is not None and len(message) == 0:
        message = None
    body = b"" if message is None else bytes(message)
    text = None
    if message is not None and len(body) <= MAX_TEXT:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            text = None
    return {
        "event": event,
        "status": status,
        "version": version,
        "files": [{"name": n, "size": len(d), "sha256": sha256(d)} for n, d in files],
        "message_len": len(body),
        "message_is_none": message is None,
        "message_sha256": sha256(body),
        "message_text": text,
    }


def send_whole(sock, data):
    """Sends all of `data` in blocking mode, under the reference's send lock (so it never
    interleaves with its Ping thread).

    The reference's timed `protocol.send` puts the shared socket in timeout mode for the send
    while its reader thread puts it back in blocking mode at every frame it starts to read.
    CPython changes the mode and the descriptor's O_NONBLOCK flag in two steps, letting other
    threads run in between: a send can then run in blocking mode on a still non-blocking
    descriptor, get EAGAIN from a full send buffer, and fail as ConnectionClosed. Seen here
    (about 1 run in 15) while a 32 MiB frame was sent and echoes came back; docs/protocol.md.
    """
    try:
        with protocol.send_lock:
            sock.sendall(data)
    except OSError as error:
        raise exceptions.ConnectionClosed() from error


class TracingReader(protocol.TPFrameReader):
    """The reference reader, unchanged, but remembering why a connection ended.

    TPFrameReader.read turns every ConnectionClosed subclass (including the
    ProtocolException for an MSB-0 status byte) into a bare ConnectionClosed,
    so the reason is recorded here on the per-connection callback object.
    """

    def read_status(self, client_sock, callback):
        status, custom_status = super().read_status(client_sock, callback)
        if status != 1:
            callback.peer_error = "ProtocolException: status byte MSB is 0"
        return status, custom_status

    def read(self, client_sock, callback):
        try:
            super().read(client_sock, callback)
        except exceptions.ConnectionClosed:
            raise
        except Exception as error:  # UnicodeDecodeError, MemoryError, ...
            if not getattr(callback, "peer_error", None):
                callback.peer_error = f"{type(error).__name__}: {error}"
            raise


def _thread_excepthook(args):
    # The reference re-raises non-ConnectionClosed errors in its threads.
    if VERBOSE:
        threading.__excepthook__(args)
    else:
        name = args.thread.name if args.thread else "?"
        sys.stderr.write(f"peer.py: thread {name} died: "
                         f"{args.exc_type.__name__}: {args.exc_value}\n")
        sys.stderr.flush()


# --------------------------------------------------------------------------
# server


def run_server(args):
    class ServerCallback(callbacks.ResponseCallback):
        peer_error = None

        def connected(self, client_sock):
            emit({"event": "connected"})
            if args.greet is not None:
                data = protocol.BytesBuilder(0).set_message(args.greet.encode("utf-8")).bytes()
                try:
                    protocol.send(client_sock, data, SEND_TIMEOUT)
                except exceptions.ConnectionClosed as error:
                    # connected() runs outside the reference's try block: make the
                    # read loop see EOF instead of killing the thread silently.
                    self.peer_error = f"greet send failed: {type(error).__name__}"
                    try:
                        client_sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        def _frame(self, event, files, message):
            emit(frame_record(event, self.custom_status, self.protocol_version,
                              [(f.name, f.data) for f in files], message))
            if args.echo:
                builder = protocol.BytesBuilder(self.custom_status)
                builder.set_protocol_version(self.protocol_version)
                for f in files:
                    builder.add_file(f.name, f.data)
                if message is not None:
                    builder.set_message(message)
                try:
                    protocol.send(self.client, builder.bytes(), SEND_TIMEOUT)
                except exceptions.ConnectionClosed:
                    self.peer_error = "echo send failed"
                    raise

        def received(self, files, message):
            self._frame("received", files, message)

        def ping_received(self, files, message):
            self._frame("ping", files, message)

        def disconnected(self):
            event = {"event": "disconnected"}
            if self.peer_error:
                event["error"] = self.peer_error
            emit(event)

    try:
        srv = server.TPServer("127.0.0.1", 0, ServerCallback, args.timeout)
    except OSError as error:
        sys.stderr.write(f"peer.py: cannot listen: {error}\n")
        _exit(1)
    srv.tp_frame_reader = TracingReader(args.timeout)
    port = srv.__server__.getsockname()[1]
    srv.listen(run_background=True, is_daemon=True)
    emit({"event": "listening", "port": port})

    # Run until stdin is closed (the driving test drops its end of the pipe).
    stdin = sys.stdin.buffer
    while True:
        try:
            chunk = stdin.read1(65536)
        except (OSError, ValueError):
            break
        if not chunk:
            break
    _exit(0)


# --------------------------------------------------------------------------
# client


def _payload(obj, what):
    if obj is None:
        return None
    if not isinstance(obj, dict):
        raise ValueError(f"{what} must be an object")
    if "text" in obj:
        return str(obj["text"]).encode("utf-8")
    if "hex" in obj:
        return bytes.fromhex(obj["hex"])
    size = int(obj.get("size", 0))
    if size < 0:
        raise ValueError(f"{what}: negative size")
    return random.Random(obj.get("seed", 0)).randbytes(size)


def parse_spec(text):
    if text.startswith("@"):
        with open(text[1:], "r", encoding="utf-8") as fh:
            text = fh.read()
    items = json.loads(text)
    if isinstance(items, dict):
        items = [items]
    if not isinstance(items, list):
        raise ValueError("spec must be a JSON list of frame objects")
    frames = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValueError(f"spec[{i}] is not an object")
        files = []
        for j, f in enumerate(item.get("files") or []):
            name = f.get("name", f"file{j}")
            files.append((str(name), _payload(f, f"spec[{i}].files[{j}]")))
        message = _payload(item.get("message"), f"spec[{i}].message")
        frames.append({
            "status": int(item.get("status", 0)),
            "version": int(item["version"]) if "version" in item else None,
            "files": files,
            "message": message,
        })
    return frames


def run_client(args):
    try:
        frames = parse_spec(args.spec)
    except (ValueError, KeyError, TypeError, OSError) as error:
        sys.stderr.write(f"peer.py: bad --spec: {error}\n")
        _exit(2)

    cond = threading.Condition()
    state = {"count": 0, "peer_closed": False, "closing": False, "error": None}

    class ClientCallback(callbacks.ResponseCallback):
        peer_error = None

        def _frame(self, event, files, message):
            emit(frame_record(event, self.custom_status, self.protocol_version,
                              [(f.name, f.data) for f in files], message))
            if event == "ping" and args.ignore_pings:
                return
            with cond:
                state["count"] += 1
                cond.notify_all()

        def received(self, files, message):
            if args.ack_upto is not None:
                self._acknowledge(message)
            self._frame("received", files, message)

        def _acknowledge(self, message):
            # A durable subscription with control frames only: `MSG <name> <code> <seq>` comes
            # before each frame; the frame after it is acknowledged (`ACK <name> <code> <seq>`)
            # if seq <= --ack-upto, before it is counted (so before the client may close).
            text = None
            if self.custom_status == 127 and message:
                text = bytes(message).decode("utf-8", "replace")
            if text is not None and text.startswith("MSG "):
                state["notice"] = text.split(" ")
                return
            notice = state.pop("notice", None)
            if notice is None or len(notice) != 4:
                return
            _, name, code, seq = notice
            if int(seq) <= args.ack_upto:
                builder = protocol.BytesBuilder(127)
                builder.set_message(f"ACK {name} {code} {seq}".encode("utf-8"))
                send_whole(sock, builder.bytes())

        def ping_received(self, files, message):
            self._frame("ping", files, message)

        def disconnected(self):
            with cond:
                state["peer_closed"] = True
                closing = state["closing"]
                cond.notify_all()
            if not closing:
                event = {"event": "disconnected"}
                if self.peer_error:
                    event["error"] = self.peer_error
                emit(event)

    try:
        tpc = client.TPClient("127.0.0.1", args.port, ClientCallback)
    except OSError as error:
        emit({"event": "error", "error": f"connect failed: {error}"})
        _exit(1)
    tpc.tp_frame_reader = TracingReader(None)
    if args.tls_ca:
        # The reference knows nothing of TLS: wrap its socket with Python's ssl module, as a
        # user of a TLS hub would. The attribute keeps its name (no name mangling: it ends in __).
        context = ssl.create_default_context(cafile=args.tls_ca)
        tpc.__client__ = context.wrap_socket(tpc.get_client(), server_hostname=args.tls_server_name)
    sock = tpc.get_client()
    emit({"event": "connected"})
    tpc.listen(run_background=True, is_daemon=True)

    if args.ping_interval is not None:
        ping.Ping(sock, args.ping_interval).start()

    send_failed = False
    for frame in frames:
        builder = protocol.BytesBuilder(frame["status"])
        if frame["version"] is not None:
            builder.set_protocol_version(frame["version"])
        for name, data in frame["files"]:
            builder.add_file(name, data)
        if frame["message"] is not None:
            builder.set_message(frame["message"])
        try:
            data = builder.bytes()
        except (ValueError, OverflowError) as error:
            emit({"event": "error", "error": f"cannot build frame: {type(error).__name__}: {error}"})
            send_failed = True
            break
        try:
            send_whole(sock, data)
        except exceptions.ConnectionClosed as error:
            emit({"event": "error", "error": f"send failed: {type(error).__name__}"})
            send_failed = True
            break
        # Describe what went on the wire: BytesBuilder does not range-check.
        emit(frame_record("sent", data[0] & 0x7F, data[1], frame["files"], frame["message"]))

    deadline = time.monotonic() + args.wait
    with cond:
        while (not send_failed and state["count"] < args.expect
               and not state["peer_closed"]):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            cond.wait(min(left, 0.5))
        ok = not send_failed and state["count"] >= args.expect
        state["closing"] = True
        peer_closed = state["peer_closed"]

    # Graceful close: FIN first, let the listener drain until the peer closes
    # (bounded), then close. Closing with unread data would send an RST.
    if not peer_closed:
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        with cond:
            end = time.monotonic() + 2.0
            while not state["peer_closed"]:
                left = end - time.monotonic()
                if left <= 0:
                    break
                cond.wait(min(left, 0.5))
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    try:
        sock.close()
    except OSError:
        pass

    if not ok and not send_failed:
        emit({"event": "timeout"})
    _exit(0 if ok else 1)


# --------------------------------------------------------------------------


def run_check(_args):
    try:
        from importlib.metadata import version
        ver = version("tej-protoc")
    except Exception:  # pragma: no cover - metadata missing
        ver = None
    emit({"event": "ok", "tej_protoc": ver})
    _exit(0)


def main(argv=None):
    global VERBOSE
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true",
                        help="enable the tej-protoc logger and full tracebacks (stderr)")

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="role", required=True)

    sp = sub.add_parser("server", parents=[common], help="run a TPServer on 127.0.0.1:0")
    sp.add_argument("--echo", action="store_true", help="send every received frame back")
    sp.add_argument("--greet", metavar="TEXT", help="send a status-0 frame with TEXT on connect")
    sp.add_argument("--timeout", type=float, metavar="SECS", default=None,
                    help="TPServer idle/read timeout")

    cp = sub.add_parser("client", parents=[common], help="connect a TPClient to 127.0.0.1:PORT")
    cp.add_argument("--port", type=int, required=True)
    cp.add_argument("--spec", required=True, metavar="JSON",
                    help="JSON list of frames to send (or @path to a JSON file)")
    cp.add_argument("--expect", type=int, default=0, metavar="N",
                    help="frames (received + ping) to wait for")
    cp.add_argument("--ping-interval", type=float, default=None, metavar="SECS",
                    help="start tej_protoc.ping.Ping before sending")
    cp.add_argument("--wait", type=float, default=20.0, metavar="SECS",
                    help="max seconds to wait for --expect frames")
    cp.add_argument("--ignore-pings", action="store_true",
                    help="do not count ping frames towards --expect")
    cp.add_argument("--ack-upto", type=int, default=None, metavar="SEQ",
                    help="a durable subscriber: acknowledge each frame announced by "
                         "`MSG <name> <code> <seq>` with seq <= SEQ (`ACK <name> <code> <seq>`)")
    cp.add_argument("--tls-ca", metavar="FILE", default=None,
                    help="wrap the socket in TLS (Python's ssl), trusting the CA in FILE")
    cp.add_argument("--tls-server-name", metavar="NAME", default="localhost",
                    help="the name the server's certificate must carry (with --tls-ca)")

    sub.add_parser("check", parents=[common], help="print the tej-protoc version and exit")

    args = parser.parse_args(argv)
    VERBOSE = args.verbose
    Log.enabled = VERBOSE
    threading.excepthook = _thread_excepthook

    if args.role == "server":
        run_server(args)
    elif args.role == "client":
        run_client(args)
    else:
        run_check(args)


if __name__ == "__main__":
    main()
