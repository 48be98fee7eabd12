//! Helpers of the durable-code tests (`tests/hub_durable.rs`, `tests/hub_durable_faults.rs`):
//! store directories, hubs storing code 5, numbered frames, durable deliveries read with the
//! framed client, and raw-socket frames written and read a chunk at a time with their SHA-256
//! taken on the way (so that a 256 MiB or 1 GiB frame is never held whole by a test).
//!
//! Included after `common/hub.rs` with `#[path = "common/durable.rs"] mod durable;` (it uses
//! `super::hub_common`); not every file uses every helper.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use sha2::{Digest, Sha256};
use tej_hub::Frame;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use super::hub_common::{
    control_frame, pattern, recv, reply_text, status, BinHub, Conn, MIB, PATIENCE,
};

/// A store directory removed when the test ends.
pub struct StoreDir(pub PathBuf);

impl StoreDir {
    /// `tej-hub-durable-<name>-<pid>` in the temporary directory, empty.
    pub fn new(name: &str) -> StoreDir {
        StoreDir::within(&std::env::temp_dir(), name)
    }

    /// `tej-hub-durable-<name>-<pid>` in `parent`, empty.
    pub fn within(parent: &Path, name: &str) -> StoreDir {
        let dir = parent.join(format!("tej-hub-durable-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        StoreDir(dir)
    }

    /// The directory as a flag value.
    pub fn path(&self) -> &str {
        self.0.to_str().expect("a UTF-8 temp path")
    }

    /// Bytes of every file under the directory (segments, indexes, cursors).
    pub fn bytes(&self) -> u64 {
        fn walk(dir: &Path) -> u64 {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return 0;
            };
            entries
                .flatten()
                .map(|entry| match entry.metadata() {
                    Ok(meta) if meta.is_dir() => walk(&entry.path()),
                    Ok(meta) => meta.len(),
                    Err(_) => 0,
                })
                .sum()
        }
        walk(&self.0)
    }

    /// `tej-hub store <dir> check`: its exit status and output.
    pub fn check(&self) -> (bool, String) {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_tej-hub"))
            .args(["store", "check", self.path()])
            .output()
            .expect("run tej-hub store check");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.success(), text)
    }
}

impl Drop for StoreDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A hub storing code 5 (and whatever `extra` flags add) in `dir`.
pub fn durable_hub(dir: &StoreDir, extra: &[&str]) -> BinHub {
    let mut flags = vec!["--durable", "5", "--store-dir", dir.path()];
    flags.extend_from_slice(extra);
    BinHub::start(&flags)
}

/// A hub with the TOML `config` written beside the store.
pub fn configured_hub(dir: &StoreDir, config: &str) -> BinHub {
    std::fs::create_dir_all(&dir.0).expect("create the store dir");
    let file = dir.0.join("hub.toml");
    std::fs::write(&file, config).expect("write the config");
    BinHub::start(&[
        "--config",
        file.to_str().expect("UTF-8"),
        "--store-dir",
        dir.path(),
    ])
}

/// Frame `i` of a test run: its number in the message, and a file of `i`-dependent bytes.
pub fn numbered(code: u8, i: u64, file_len: usize) -> Frame {
    let data: Vec<u8> = (0..file_len).map(|at| (at as u64 ^ i) as u8).collect();
    Frame::builder(status(code))
        .file("part", data)
        .message(format!("frame {i}"))
        .build()
}

/// The number in a [`numbered`] frame's message.
pub fn message_number(frame: &Frame) -> u64 {
    std::str::from_utf8(&frame.message)
        .ok()
        .and_then(|text| text.strip_prefix("frame "))
        .and_then(|n| n.parse().ok())
        .expect("a numbered frame")
}

/// Parses `MSG <name> <code> <seq>`, checking the name; returns the code and sequence number.
pub fn parse_notice(text: &str, name: &str) -> (u8, u64) {
    let mut words = text.split(' ');
    assert_eq!(words.next(), Some("MSG"), "{text}");
    assert_eq!(words.next(), Some(name), "{text}");
    let code: u8 = words.next().and_then(|c| c.parse().ok()).expect("a code");
    let seq: u64 = words
        .next()
        .and_then(|s| s.parse().ok())
        .expect("a sequence number");
    assert_eq!(words.next(), None, "{text}");
    (code, seq)
}

/// Reads `MSG <name> <code> <seq>` then the frame it announces.
pub async fn next_delivery(conn: &mut Conn, name: &str) -> (u64, Frame) {
    let notice = recv(conn).await;
    let text = reply_text(&notice, "a durable delivery");
    let (code, seq) = parse_notice(&text, name);
    let frame = recv(conn).await;
    assert_eq!(frame.status.code(), code, "{text}");
    (seq, frame)
}

/// The sequence number in `OK STORED 5 <seq>`; panics on anything else.
pub fn stored_seq(reply: &str) -> u64 {
    reply
        .strip_prefix("OK STORED 5 ")
        .and_then(|seq| seq.parse().ok())
        .unwrap_or_else(|| panic!("expected OK STORED 5 <seq>, got {reply:?}"))
}

/// Publishes `frames` with `PUBACK on` and returns the sequence numbers acknowledged, in order.
pub async fn publish_acknowledged(conn: &mut Conn, frames: &[Frame]) -> Vec<u64> {
    for frame in frames {
        super::hub_common::send(conn, frame.clone()).await;
    }
    let mut seqs = Vec::new();
    for _ in frames {
        seqs.push(stored_seq(&reply_text(&recv(conn).await, "a stored frame")));
    }
    seqs
}

/// SHA-256 of bytes.
pub fn sha(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The wire bytes of control command `command`.
pub fn control_wire(command: &str) -> bytes::Bytes {
    control_frame(command)
        .to_wire()
        .expect("a control frame encodes")
}

/// Writes a one-file frame of `code` whose file is `file_len` bytes (deterministic in `seed`,
/// made a MiB at a time) and whose message is `big <seed>`, hashing what it writes. With
/// `stop_after`, stops once at least that many bytes are written and returns `None`: the frame
/// is left torn.
///
/// # Errors
/// The socket fails (the hub was killed).
pub async fn write_streamed<W: AsyncWrite + Unpin>(
    out: &mut W,
    code: u8,
    file_len: u64,
    seed: u64,
    stop_after: Option<u64>,
) -> std::io::Result<Option<[u8; 32]>> {
    let mut hasher = Sha256::new();
    let message = format!("big {seed}");
    let mut head = BytesMut::new();
    head.put_u8(0x80 | code);
    head.put_u8(1);
    head.put_u64(1);
    head.put_u16(3);
    head.put_slice(b"big");
    head.put_u64(file_len);
    hasher.update(&head);
    out.write_all(&head).await?;
    let base = pattern(MIB, seed);
    let mut chunk = base.to_vec();
    let mut written = head.len() as u64;
    let mut at = 0u64;
    while at < file_len {
        if stop_after.is_some_and(|stop| written >= stop) {
            out.flush().await?;
            return Ok(None);
        }
        let n = (file_len - at).min(MIB as u64) as usize;
        chunk.copy_from_slice(&base);
        chunk[..8].copy_from_slice(&(at / MIB as u64).to_le_bytes());
        hasher.update(&chunk[..n]);
        out.write_all(&chunk[..n]).await?;
        at += n as u64;
        written += n as u64;
    }
    let mut tail = BytesMut::new();
    tail.put_u64(message.len() as u64);
    tail.put_slice(message.as_bytes());
    hasher.update(&tail);
    out.write_all(&tail).await?;
    out.flush().await?;
    Ok(Some(hasher.finalize().into()))
}

/// A frame read off a raw socket: its status code, wire length, SHA-256 of its wire bytes and
/// its message (read whole: test messages are small).
#[derive(Clone, Debug)]
pub struct RawFrame {
    pub code: u8,
    pub len: u64,
    pub digest: [u8; 32],
    pub message: Vec<u8>,
}

impl RawFrame {
    /// A control frame's text.
    pub fn text(&self) -> String {
        assert_eq!(
            self.code, 127,
            "expected a control frame, got code {}",
            self.code
        );
        String::from_utf8(self.message.clone()).expect("control replies are text")
    }
}

/// Reads frames off a socket a chunk at a time, hashing them on the way, optionally no faster
/// than a rate; every read is bounded by [`PATIENCE`].
pub struct RawReader<R> {
    inner: BufReader<R>,
    /// Bytes per second, and since when with how many bytes read.
    rate: Option<(f64, Instant, u64)>,
    /// A pause, once, after this many bytes read at the rate.
    stall: Option<(u64, Duration)>,
}

impl<R: AsyncRead + Unpin> RawReader<R> {
    /// A reader of `inner`, at full speed.
    pub fn new(inner: R) -> RawReader<R> {
        RawReader {
            inner: BufReader::with_capacity(64 * 1024, inner),
            rate: None,
            stall: None,
        }
    }

    /// From now on, reads no faster than `bytes_per_second` (`None`: full speed).
    pub fn throttle(&mut self, bytes_per_second: Option<f64>) {
        self.rate = bytes_per_second.map(|rate| (rate, Instant::now(), 0));
    }

    /// Once `after` bytes have been read at the throttled rate, stops reading for `pause`.
    pub fn stall(&mut self, after: u64, pause: Duration) {
        self.stall = Some((after, pause));
    }

    async fn exact(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        match tokio::time::timeout(PATIENCE, self.inner.read_exact(buf)).await {
            Ok(read) => read.map(|_| ()),
            Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
        }
    }

    async fn field<const N: usize>(&mut self, hasher: &mut Sha256) -> std::io::Result<[u8; N]> {
        let mut bytes = [0u8; N];
        self.exact(&mut bytes).await?;
        hasher.update(bytes);
        Ok(bytes)
    }

    /// Reads `len` bytes into the hash, a chunk at a time, at the reader's rate.
    async fn skim(&mut self, len: u64, hasher: &mut Sha256) -> std::io::Result<()> {
        let mut chunk = vec![0u8; 256 * 1024];
        let mut left = len;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            let got = match tokio::time::timeout(PATIENCE, self.inner.read(&mut chunk[..n])).await {
                Ok(Ok(0)) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(read) => read?,
                Err(_) => return Err(std::io::ErrorKind::TimedOut.into()),
            };
            hasher.update(&chunk[..got]);
            left -= got as u64;
            if let Some((rate, since, read)) = &mut self.rate {
                *read += got as u64;
                if let Some((after, pause)) = self.stall {
                    if *read >= after {
                        self.stall = None;
                        tokio::time::sleep(pause).await;
                        *since += pause;
                    }
                }
                let due = *since + Duration::from_secs_f64(*read as f64 / *rate);
                tokio::time::sleep_until(due.into()).await;
            }
        }
        Ok(())
    }

    /// The next frame.
    ///
    /// # Errors
    /// The socket ends or fails, a read takes longer than [`PATIENCE`], or the bytes are not a
    /// frame a test sends (over 1,000 files or a message over 16 MiB).
    pub async fn next(&mut self) -> std::io::Result<RawFrame> {
        let bad =
            |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
        let mut hasher = Sha256::new();
        let [status] = self.field::<1>(&mut hasher).await?;
        let [version] = self.field::<1>(&mut hasher).await?;
        if status & 0x80 == 0 || version != 1 {
            return Err(bad("not a TEJ v1 frame head"));
        }
        let files = u64::from_be_bytes(self.field(&mut hasher).await?);
        if files > 1000 {
            return Err(bad("more than 1,000 files"));
        }
        let mut len = 10u64;
        for _ in 0..files {
            let name = u16::from_be_bytes(self.field(&mut hasher).await?);
            let mut name_bytes = vec![0u8; usize::from(name)];
            self.exact(&mut name_bytes).await?;
            hasher.update(&name_bytes);
            let data = u64::from_be_bytes(self.field(&mut hasher).await?);
            self.skim(data, &mut hasher).await?;
            len += 2 + u64::from(name) + 8 + data;
        }
        let message_len = u64::from_be_bytes(self.field(&mut hasher).await?);
        if message_len > 16 * MIB as u64 {
            return Err(bad("a message over 16 MiB"));
        }
        let mut message = vec![0u8; message_len as usize];
        self.exact(&mut message).await?;
        hasher.update(&message);
        len += 8 + message_len;
        Ok(RawFrame {
            code: status & 0x7f,
            len,
            digest: hasher.finalize().into(),
            message,
        })
    }

    /// The next frame, which must be a control frame; its text.
    pub async fn control(&mut self) -> String {
        self.next()
            .await
            .expect("a control frame from the hub")
            .text()
    }

    /// Reads `MSG <name> <code> <seq>` and the frame it announces.
    pub async fn delivery(&mut self, name: &str) -> (u64, RawFrame) {
        self.try_delivery(name)
            .await
            .unwrap_or_else(|error| panic!("a durable delivery: {error}"))
    }

    /// As [`delivery`](Self::delivery), returning what failed.
    ///
    /// # Errors
    /// See [`next`](Self::next).
    pub async fn try_delivery(&mut self, name: &str) -> std::io::Result<(u64, RawFrame)> {
        let text = self.next().await?.text();
        let (code, seq) = parse_notice(&text, name);
        let frame = self.next().await?;
        assert_eq!(frame.code, code, "{text}");
        Ok((seq, frame))
    }
}
