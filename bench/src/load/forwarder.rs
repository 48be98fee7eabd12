//! The yardstick: a plain tokio forwarder that copies every whole message each publisher sends to
//! every subscriber connection. It knows message boundaries ([`whole_frames`]: the length prefix
//! of each 18-byte head) and nothing else: no subscriptions, no codec, no control commands.
//!
//! What a competent plain forwarder does, and what it does not:
//! - Two listening ports: one for publishers, one for subscribers (no hello to parse).
//! - Its own multi-threaded tokio runtime with one worker per core, as many threads as the hub's
//!   default workers.
//! - Per publisher, a task reads into a buffer (at least [`READ_BYTES`] free before each read),
//!   splits off the whole frames at its start as one shared `Bytes` and hands it to every
//!   subscriber; a frame larger than the buffer grows it until the frame is whole (messages are
//!   forwarded whole, never in pieces).
//! - Per subscriber, a bounded queue of [`QUEUE_CHUNKS`] chunks and a writer task (`write_all`
//!   per chunk). A full queue makes the publisher's task wait: lossless back-pressure, like the
//!   hub's default slow-consumer policy `block`.
//!
//! The forwarder must be started and dropped outside any async context (it owns a runtime).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::{mpsc, watch};

use super::stamp::{whole_frames, MAX_MESSAGE};
use super::LoadError;

/// Free buffer space before each read of a publisher's socket.
const READ_BYTES: usize = 256 * 1024;
/// Chunks a subscriber's queue holds before publishers wait (with chunks of up to
/// [`READ_BYTES`], about the hub's 16 MiB `max-pending-bytes`).
const QUEUE_CHUNKS: usize = 64;
/// Pause after a failed `accept` before trying again.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// The subscribers' queues, in the order they connected; replaced (copy on write) when one
/// joins.
pub(super) type Subscribers = Arc<Vec<mpsc::Sender<Bytes>>>;

/// Where to reach a running forwarder.
#[derive(Clone)]
pub(super) struct Ports {
    /// Publishers connect here.
    pub(super) publishers: SocketAddr,
    /// Subscribers connect here.
    pub(super) subscribers: SocketAddr,
    /// The subscribers accepted so far (to wait for all of them before publishing).
    pub(super) joined: watch::Receiver<Subscribers>,
}

/// A forwarder running on a runtime of its own; stopped when dropped.
pub(super) struct Forwarder {
    /// Its runtime (taken on drop).
    runtime: Option<Runtime>,
    /// Its ports.
    ports: Ports,
}

impl Forwarder {
    /// Starts a forwarder on `workers` threads, listening on two loopback ports.
    ///
    /// # Errors
    /// [`LoadError::Io`] when the runtime cannot start or a port cannot be bound.
    pub(super) fn start(workers: usize) -> Result<Forwarder, LoadError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers.max(1))
            .thread_name("bench-forwarder")
            .enable_all()
            .build()
            .map_err(|source| LoadError::io("cannot start the forwarder's runtime", source))?;
        let bind = || async {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            Ok::<_, std::io::Error>((listener, addr))
        };
        let (publishers, subscribers) = runtime
            .block_on(async { Ok::<_, std::io::Error>((bind().await?, bind().await?)) })
            .map_err(|source| LoadError::io("forwarder: cannot listen on 127.0.0.1:0", source))?;
        let (join, joined) = watch::channel(Subscribers::default());
        runtime.spawn(accept_subscribers(subscribers.0, join));
        runtime.spawn(accept_publishers(publishers.0, joined.clone()));
        Ok(Forwarder {
            runtime: Some(runtime),
            ports: Ports {
                publishers: publishers.1,
                subscribers: subscribers.1,
                joined,
            },
        })
    }

    /// Where to reach it.
    pub(super) fn ports(&self) -> Ports {
        self.ports.clone()
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Accepts subscribers: each gets a bounded queue and a writer task, and joins the list.
async fn accept_subscribers(listener: TcpListener, join: watch::Sender<Subscribers>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(ACCEPT_RETRY).await;
            continue;
        };
        // Without it, small chunks could wait for the peer's delayed acknowledgement.
        let _ = stream.set_nodelay(true);
        let (queue, chunks) = mpsc::channel(QUEUE_CHUNKS);
        tokio::spawn(write_out(stream, chunks));
        join.send_modify(|subscribers| Arc::make_mut(subscribers).push(queue));
    }
}

/// Writes a subscriber's chunks in order until its queue closes or a write fails (then the
/// queue's receiver is dropped and publishers skip it).
async fn write_out(mut stream: TcpStream, mut chunks: mpsc::Receiver<Bytes>) {
    while let Some(chunk) = chunks.recv().await {
        if stream.write_all(&chunk).await.is_err() {
            return;
        }
    }
}

/// Accepts publishers: a forwarding task each.
async fn accept_publishers(listener: TcpListener, subscribers: watch::Receiver<Subscribers>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(ACCEPT_RETRY).await;
            continue;
        };
        tokio::spawn(forward(stream, subscribers.clone()));
    }
}

/// Reads a publisher and hands each run of whole frames to every subscriber's queue; ends when
/// the publisher closes, its socket fails or it sends a length over [`MAX_MESSAGE`].
async fn forward(mut stream: TcpStream, subscribers: watch::Receiver<Subscribers>) {
    let mut buf = BytesMut::with_capacity(READ_BYTES);
    let mut next_frame: usize = 0;
    loop {
        buf.reserve(READ_BYTES.max(next_frame.saturating_sub(buf.len())));
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let Ok(boundary) = whole_frames(&buf, MAX_MESSAGE) else {
            return;
        };
        next_frame = boundary.next_frame.unwrap_or(0);
        if boundary.whole == 0 {
            continue;
        }
        let chunk = buf.split_to(boundary.whole).freeze();
        let targets = subscribers.borrow().clone();
        for queue in targets.iter() {
            // A subscriber gone (its writer ended) is skipped.
            let _ = queue.send(chunk.clone()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tej_hub::Status;
    use tokio::io::AsyncReadExt;

    use super::super::stamp::{frame, Batch, HEAD_LEN};
    use super::*;

    /// Two subscribers get every whole frame two publishers send, each publisher's in order,
    /// including a frame larger than the read buffer sent in small pieces.
    #[test]
    fn forwards_whole_frames_to_every_subscriber() {
        let forwarder = Forwarder::start(2).expect("starts");
        let ports = forwarder.ports();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let status = Status::new(5).expect("5");
        let big = frame(status, &vec![7; 3 * READ_BYTES]);
        let mut small = Batch::new(status, 100, 1, 10_000);
        let small = small.stamp(usize::MAX, 0, 0).to_vec();
        let expected = big.len() + small.len();
        runtime.block_on(async {
            let mut subscribers = Vec::new();
            for _ in 0..2 {
                let stream = TcpStream::connect(ports.subscribers)
                    .await
                    .expect("connects");
                subscribers.push(stream);
            }
            let mut joined = ports.joined.clone();
            joined.wait_for(|s| s.len() == 2).await.expect("joined");
            let mut one = TcpStream::connect(ports.publishers)
                .await
                .expect("connects");
            let mut two = TcpStream::connect(ports.publishers)
                .await
                .expect("connects");
            for piece in big.chunks(1000) {
                one.write_all(piece).await.expect("writes");
            }
            two.write_all(&small).await.expect("writes");
            for mut subscriber in subscribers {
                let mut got = vec![0; expected];
                let deadline = Instant::now() + Duration::from_secs(30);
                tokio::time::timeout_at(deadline.into(), subscriber.read_exact(&mut got))
                    .await
                    .expect("in time")
                    .expect("reads");
                // Whole frames, the large one once, the small ones in order around it.
                let mut frames = Vec::new();
                let mut rest = &got[..];
                while !rest.is_empty() {
                    // A head alone is an incomplete frame whose size is known.
                    let len = whole_frames(&rest[..HEAD_LEN], MAX_MESSAGE)
                        .expect("valid")
                        .next_frame
                        .unwrap_or(HEAD_LEN);
                    frames.push(rest[..len].to_vec());
                    rest = &rest[len..];
                }
                let (large, smalls): (Vec<_>, Vec<_>) =
                    frames.into_iter().partition(|f| f.len() == big.len());
                assert_eq!(
                    large,
                    vec![big.clone()],
                    "the large frame arrived whole, once"
                );
                assert_eq!(
                    smalls.concat(),
                    small,
                    "the small frames arrived whole, in order"
                );
            }
        });
        drop(runtime);
        drop(forwarder);
    }
}
