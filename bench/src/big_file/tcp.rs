//! Plain TCP for `bench big-file`: connections and writes with bounded waits, the file's bytes
//! ([`Pattern`], generated while they are sent), and the yardstick ([`raw_loopback`]): the same
//! bytes over one loopback connection with nothing in between.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use xxhash_rust::xxh3::Xxh3Default;

use crate::{before, limit};

/// How long one connect, one accept or one subscription handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// When a connection step started now must be done: [`CONNECT_TIMEOUT`] from now, at the latest
/// at `deadline`.
pub(super) fn connect_limit(deadline: Instant) -> Instant {
    limit(deadline, CONNECT_TIMEOUT)
}

/// A loopback connection to `addr`, with `TCP_NODELAY` (`bench soak` connects with it too).
pub(crate) async fn connect(addr: SocketAddr, deadline: Instant) -> Result<TcpStream, String> {
    let connecting = TcpStream::connect(addr);
    let stream = before(connect_limit(deadline), "connecting", connecting)
        .await?
        .map_err(|error| format!("cannot connect to {addr}: {error}"))?;
    stream
        .set_nodelay(true)
        .map_err(|error| format!("cannot set TCP_NODELAY: {error}"))?;
    Ok(stream)
}

/// Writes all of `bytes` before `deadline`.
pub(super) async fn write(
    writer: &mut (impl AsyncWrite + Unpin),
    bytes: &[u8],
    deadline: Instant,
) -> Result<(), String> {
    before(deadline, "writing", writer.write_all(bytes))
        .await?
        .map_err(|error| format!("write failed: {error}"))
}

/// The file's bytes, made on the fly: one block of xorshift output, sent again and again with
/// its first 8 bytes replaced by the block's number, so that no two blocks are alike and a block
/// lost, repeated or reordered changes the hash.
pub(super) struct Pattern {
    /// The block, its first 8 bytes overwritten each time.
    block: Vec<u8>,
    /// The next block's number.
    number: u64,
}

impl Pattern {
    /// A pattern of `len`-byte blocks.
    pub(super) fn new(len: usize) -> Pattern {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut block = Vec::with_capacity(len + 8);
        while block.len() < len {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            block.extend_from_slice(&state.to_le_bytes());
        }
        block.truncate(len);
        Pattern { block, number: 0 }
    }

    /// The next block.
    fn next_block(&mut self) -> &[u8] {
        let number = self.number.to_le_bytes();
        let n = number.len().min(self.block.len());
        self.block[..n].copy_from_slice(&number[..n]);
        self.number += 1;
        &self.block
    }

    /// Writes the next `size` bytes, one write per block (the last one cut short); returns their
    /// xxh3-128.
    pub(super) async fn send(
        &mut self,
        writer: &mut (impl AsyncWrite + Unpin),
        size: u64,
        deadline: Instant,
    ) -> Result<u128, String> {
        let mut hasher = Xxh3Default::new();
        let mut left = size;
        while left > 0 {
            let block = self.next_block();
            let n = usize::try_from(left).map_or(block.len(), |left| left.min(block.len()));
            let data = &block[..n];
            hasher.update(data);
            write(writer, data, deadline).await?;
            left -= n as u64;
        }
        Ok(hasher.digest128())
    }
}

/// The yardstick's result.
pub(super) struct Raw {
    /// Bytes sent.
    pub(super) bytes: u64,
    /// From the first write until the receiver had every byte.
    pub(super) seconds: f64,
    /// xxh3-128 of what was sent.
    pub(super) sent_hash: u128,
    /// xxh3-128 of what was received.
    pub(super) received_hash: u128,
}

/// Plain loopback TCP: one task writes `size` bytes of [`Pattern`] in `io_size` writes, another
/// reads them with `io_size` reads; both hash, as the relay's ends do.
pub(super) async fn raw_loopback(
    size: u64,
    io_size: usize,
    deadline: Instant,
) -> Result<Raw, String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|error| format!("cannot listen on 127.0.0.1:0: {error}"))?;
    let addr = listener
        .local_addr()
        .map_err(|error| format!("no local address: {error}"))?;
    // Dropping the set (an early return) aborts the receiver.
    let mut receiver = JoinSet::new();
    receiver.spawn(receive_raw(listener, size, io_size, deadline));
    let mut stream = connect(addr, deadline).await?;
    let mut pattern = Pattern::new(io_size);
    let start = Instant::now();
    let sent_hash = pattern.send(&mut stream, size, deadline).await?;
    let (end, received_hash) = match receiver.join_next().await {
        Some(Ok(result)) => result?,
        Some(Err(error)) => return Err(format!("the receiving task failed: {error}")),
        None => return Err("the receiving task is gone".to_owned()),
    };
    Ok(Raw {
        bytes: size,
        seconds: end.saturating_duration_since(start).as_secs_f64(),
        sent_hash,
        received_hash,
    })
}

/// The yardstick's receiver: accepts one connection and reads `size` bytes with `io_size` reads;
/// returns when it had them all and their xxh3-128.
async fn receive_raw(
    listener: TcpListener,
    size: u64,
    io_size: usize,
    deadline: Instant,
) -> Result<(Instant, u128), String> {
    let (mut stream, _) = before(connect_limit(deadline), "accepting", listener.accept())
        .await?
        .map_err(|error| format!("accept failed: {error}"))?;
    let mut buf = vec![0; io_size];
    let mut hasher = Xxh3Default::new();
    let mut got = 0u64;
    while got < size {
        let n = before(deadline, "reading", stream.read(&mut buf))
            .await?
            .map_err(|error| format!("read failed: {error}"))?;
        if n == 0 {
            return Err(format!("closed after {got} of {size} bytes"));
        }
        hasher.update(&buf[..n]);
        got += n as u64;
    }
    Ok((Instant::now(), hasher.digest128()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_blocks_differ() {
        let mut pattern = Pattern::new(4096);
        let first = pattern.next_block().to_vec();
        let second = pattern.next_block().to_vec();
        assert_eq!(first.len(), 4096);
        assert_ne!(first, second);
        assert_eq!(first[8..], second[8..]);
        assert_eq!(second[..8], 1u64.to_le_bytes());
        let again = Pattern::new(4096).next_block().to_vec();
        assert_eq!(first, again, "deterministic");
    }

    #[tokio::test]
    async fn sends_and_hashes_what_it_writes() {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut sent = Vec::new();
        let hash = Pattern::new(4096)
            .send(&mut sent, 10_000, deadline)
            .await
            .expect("writes to a Vec");
        assert_eq!(sent.len(), 10_000);
        assert_eq!(hash, xxhash_rust::xxh3::xxh3_128(&sent));
        let raw = raw_loopback(100_000, 4096, deadline)
            .await
            .expect("loopback");
        assert_eq!(raw.sent_hash, raw.received_hash);
    }
}
