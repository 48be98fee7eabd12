#!/usr/bin/env python3
"""Writes the committed seed corpus, fuzz/seeds/<target>/: a few valid and broken frames for the
byte-stream targets (each prefixed with the 4 setup bytes fuzz/src/lib.rs reads), commands for
`control`, TOML files for `config`. Run from fuzz/; scripts/fuzz copies the seeds into the
working corpus."""
import os
import struct


def frame(status, files=(), message=b'', version=1):
    b = bytes([status | 0x80, version]) + struct.pack('>Q', len(files))
    for name, data in files:
        b += struct.pack('>H', len(name)) + name + struct.pack('>Q', len(data)) + data
    return b + struct.pack('>Q', len(message)) + message


FRAMES = {
    'message': frame(5, message=b'hello'),
    'empty': frame(0),
    'files': frame(7, files=[(b'a.txt', b'hello world'), (b'', b'')], message=b'hi'),
    'run': frame(5, message=b'a') * 5 + frame(6, message=b'b') + frame(2),
    'control': frame(127, message=b'SUB 5,7-9'),
    'large': frame(9, files=[(b'big.bin', bytes(range(256)) * 8)], message=b'x' * 300),
    'bad_status': bytes([5, 1]) + struct.pack('>Q', 0) + struct.pack('>Q', 0),
    'huge_count': bytes([0x85, 1]) + struct.pack('>Q', 2**64 - 1),
    'truncated': frame(5, files=[(b'f', b'data' * 10)])[:30],
    'bad_name': bytes([0x85, 1]) + struct.pack('>Q', 1) + struct.pack('>H', 2) + b'\xff\xfe'
    + struct.pack('>Q', 0) * 2,
}
# Setup bytes: largest read, limits, cut-through, read-size seed (see fuzz/src/lib.rs).
SETUPS = [bytes([0, 5, 0, 1]), bytes([1, 0xff, 3, 7]), bytes([3, 4, 4, 9]), bytes([5, 13, 2, 42])]
COMMANDS = [b'SUB 5', b'sub 5, 6 8-9\n', b'UNSUB *', b'ECHO on', b'echo OFF', b'INFO',
            b'SLOW drop', b'SLOW block', b'SUB 1 - 3', b'SUB 0-126', b'SUB 2', b'UNSUB 127',
            b'SUB 0005,,006', b'BOGUS x', b'UNSUB 5,6 durable=jobs delete=yes',
            b'SUB 5 durable=jobs delete=yes', b'OK UNSUB 5 durable=jobs delete=yes']
CONFIGS = {
    'full.toml': '''listen = "127.0.0.1:9000"
workers = 2
max-frame-bytes = 17179869184
cut-through-bytes = 1048576
max-pending-bytes = 8388608
slow-consumer = "drop"
slow-consumer-timeout = 30
idle-timeout = 0
stall-timeout = 30
min-rate-bytes = 65536
min-rate-window = 10
log-format = "json"
''',
    'small.toml': 'max-frame-bytes = 1024\nslow-consumer = "block"\n',
    'bad.toml': 'workers = 0\nmin-rate-bytes = 5\nmin-rate-window = 0\n',
    'unknown.toml': 'max-frames = 3\n',
}


def crc32c(data):
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def record(seq, frame_bytes):
    """A store record (docs/durability.md): header with CRCs, then the frame."""
    head = struct.pack('>IQQQI', 0x544A5331, seq, 1_700_000_000_000_000_000 + seq,
                       len(frame_bytes), crc32c(frame_bytes))
    return head + struct.pack('>I', crc32c(head)) + frame_bytes


LOG = b''.join(record(i + 1, f) for i, f in enumerate(
    [FRAMES['message'], FRAMES['files'], FRAMES['large'], FRAMES['empty']]))
STORE_SEEDS = {
    'log': LOG,
    'torn': LOG[:-7],
    'flipped': LOG[:60] + bytes([LOG[60] ^ 4]) + LOG[61:],
    'lengths': bytes([0, 40, 0, 1]) + bytes([5]) + b'hello' + bytes([0]) + bytes([200]) + bytes(range(200)),
}


def write(target, name, data):
    os.makedirs(f'seeds/{target}', exist_ok=True)
    with open(f'seeds/{target}/{name}', 'wb') as out:
        out.write(data)


for target in ['codec', 'part_codec', 'relay']:
    for i, (name, data) in enumerate(FRAMES.items()):
        write(target, name, SETUPS[i % len(SETUPS)] + data)
for i, command in enumerate(COMMANDS):
    write('control', f'{i:02}', command)
for name, text in CONFIGS.items():
    write('config', name, text.encode())
for name, data in STORE_SEEDS.items():
    write('store_recovery', name, data)
