//! Frames that say who published them: `P<publisher> <seq> ` padded to a size, so a reader can
//! check exactly-once and per-publisher order (tests/hub_groups.rs, tests/hub_cluster_groups.rs).

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use tej_hub::{Frame, Status};
use tokio::sync::mpsc;

/// Frame `seq` of publisher `publisher` on `status`: its message is `P<publisher> <seq> `
/// padded with `x` to `size` bytes.
pub fn frame(status: Status, publisher: usize, seq: usize, size: usize) -> Frame {
    let mut text = format!("P{publisher} {seq} ").into_bytes();
    text.resize(size.max(text.len()), b'x');
    Frame::message(status, Bytes::from(text))
}

/// The (publisher, sequence) of a frame of [`frame`].
pub fn id_of(frame: &Frame) -> (usize, usize) {
    let text = String::from_utf8_lossy(&frame.message[..frame.message.len().min(32)]).into_owned();
    let mut words = text.split(' ');
    let publisher = words
        .next()
        .and_then(|word| word.strip_prefix('P'))
        .and_then(|n| n.parse().ok());
    let seq = words.next().and_then(|n| n.parse().ok());
    match (publisher, seq) {
        (Some(publisher), Some(seq)) => (publisher, seq),
        _ => panic!("not a test frame: {text:?}"),
    }
}

/// Asserts that `ids` are in publication order per publisher.
pub fn in_order_per_publisher(ids: &[(usize, usize)], who: &str) {
    let mut last: HashMap<usize, usize> = HashMap::new();
    for &(publisher, seq) in ids {
        if let Some(before) = last.insert(publisher, seq) {
            assert!(seq > before, "{who}: P{publisher} {seq} after {before}");
        }
    }
}

/// Per reader, the ids it got (readers send `(reader index, id)`), once `done` says enough
/// arrived — within `run`, or a panic — and then `quiet` more, so that a late duplicate would be
/// seen.
pub async fn collect(
    readers: usize,
    events: &mut mpsc::UnboundedReceiver<(usize, (usize, usize))>,
    run: Duration,
    quiet: Duration,
    done: impl Fn(&[Vec<(usize, usize)>]) -> bool,
) -> Vec<Vec<(usize, usize)>> {
    let mut got = vec![Vec::new(); readers];
    let arrived = tokio::time::timeout(run, async {
        while !done(&got) {
            let Some((index, id)) = events.recv().await else {
                return;
            };
            got[index].push(id);
        }
    })
    .await;
    assert!(arrived.is_ok(), "every frame: not within {run:?}");
    while let Ok(Some((index, id))) = tokio::time::timeout(quiet, events.recv()).await {
        got[index].push(id);
    }
    got
}
