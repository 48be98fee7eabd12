//! One publisher's stream across NATS, as both ends number it: [`Sending`] decides which parts
//! the outbound task publishes under which publisher sequence number, [`Receiving`] what the
//! inbound task does with each part it gets. Together they keep the promise that a frame reaches
//! another hub's subscribers whole or is cut there — never spliced.
//!
//! A part that could not cross still uses up its sequence number, and the rest of its frame is
//! not sent: the next part the receiver gets from that publisher is past a gap, and the frame it
//! was in the middle of is cut. A frame whose end was never offered (the publisher stopped
//! offering it: the link was down, or the outbound queue was shed) leaves a gap the same way when
//! the publisher's next frame starts.

use crate::hub::delivery::relay::PieceKind;

/// The sending side of one publisher's stream.
#[derive(Debug, Default)]
pub(super) struct Sending {
    /// The last sequence number used.
    seq: u64,
    /// Whether a streamed frame of it is begun on NATS.
    open: bool,
    /// Whether the rest of the current frame is skipped (a part of it could not cross).
    skipping: bool,
}

impl Sending {
    /// The sequence number to publish the next part, of kind `kind`, under; `None` when it is
    /// the rest of a frame that could not cross, and is not sent.
    pub(super) fn plan(&mut self, kind: PieceKind) -> Option<u64> {
        if kind.starts_frame() {
            self.skipping = false;
            if std::mem::take(&mut self.open) {
                // The frame before never got its end: a gap tells the receivers to cut it.
                self.seq += 1;
            }
        } else if self.skipping {
            self.skipping = !kind.ends_frame();
            return None;
        }
        Some(self.seq + 1)
    }

    /// The planned part of kind `kind` was published.
    pub(super) fn sent(&mut self, kind: PieceKind) {
        self.seq += 1;
        match kind {
            PieceKind::First => self.open = true,
            PieceKind::Whole | PieceKind::Last => self.open = false,
            PieceKind::Middle => {}
        }
    }

    /// The planned part of kind `kind` could not be published: its number is used up and the
    /// rest of its frame will be skipped. Whether its frame had begun to cross.
    pub(super) fn failed(&mut self, kind: PieceKind) -> bool {
        self.seq += 1;
        self.skipping = !kind.ends_frame();
        std::mem::take(&mut self.open)
    }

    /// The number a publisher's end is published under.
    pub(super) fn next(&self) -> u64 {
        self.seq + 1
    }
}

/// What the receiving side does with a part.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Verdict {
    /// Cut the frame in progress (close its subscribers) and count it: part of it was lost.
    pub cut: bool,
    /// Hand the part to the remote publisher.
    pub deliver: bool,
}

/// The receiving side of one remote publisher's stream.
#[derive(Debug)]
pub(super) struct Receiving {
    /// The next sequence number expected.
    next: u64,
    /// Whether it is in the middle of a streamed frame here.
    in_frame: bool,
}

impl Receiving {
    /// A stream first seen at sequence number `seq`.
    pub(super) fn new(seq: u64) -> Receiving {
        Receiving {
            next: seq,
            in_frame: false,
        }
    }

    /// Part `seq` of kind `kind` arrived.
    pub(super) fn receive(&mut self, seq: u64, kind: PieceKind) -> Verdict {
        // A new frame while one is open cannot come from a sender that keeps the rules: cut.
        let cut = self.in_frame && (seq != self.next || kind.starts_frame());
        if cut {
            self.in_frame = false;
        }
        self.next = seq.saturating_add(1);
        Verdict {
            cut,
            deliver: kind.starts_frame() || self.in_frame,
        }
    }

    /// A part of kind `kind` was handed over; `taken` is whether its frame goes on.
    pub(super) fn delivered(&mut self, kind: PieceKind, taken: bool) {
        self.in_frame = taken && matches!(kind, PieceKind::First | PieceKind::Middle);
    }

    /// The stream broke (the link dropped, its hub went): whether a frame was in progress and is
    /// cut.
    pub(super) fn cut(&mut self) -> bool {
        std::mem::take(&mut self.in_frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What becomes of one part of a frame.
    #[derive(Clone, Copy, Debug)]
    enum Fate {
        /// Crosses.
        Crosses,
        /// The outbound task cannot publish it (NATS took nothing in time, or it was shed).
        Fails,
        /// Published, but NATS loses it on the way (a slow consumer, a reconnect).
        Lost,
        /// The publisher's offer is refused (link down): neither it nor the rest of its frame
        /// reaches the outbound task.
        Refused,
        /// Crosses, then the receiving hub's link drops.
        ThenLinkDrops,
    }

    fn fate() -> impl Strategy<Value = Fate> {
        prop_oneof![
            6 => Just(Fate::Crosses),
            1 => Just(Fate::Fails),
            1 => Just(Fate::Lost),
            1 => Just(Fate::Refused),
            1 => Just(Fate::ThenLinkDrops),
        ]
    }

    /// The kinds of a frame of `parts` parts.
    fn kinds(parts: usize) -> Vec<PieceKind> {
        (0..parts)
            .map(|part| match (part == 0, part + 1 == parts) {
                (true, true) => PieceKind::Whole,
                (true, false) => PieceKind::First,
                (false, true) => PieceKind::Last,
                (false, false) => PieceKind::Middle,
            })
            .collect()
    }

    proptest! {
        /// Pieces, failures, losses and link drops in any order: every frame the receiver
        /// completes is one of the publisher's frames, whole and in order; the others are cut or
        /// never begun.
        #[test]
        fn a_frame_arrives_whole_or_is_cut(
            frames in proptest::collection::vec(
                proptest::collection::vec(fate(), 1..6), 1..40),
        ) {
            let mut sending = Sending::default();
            let mut receiving: Option<Receiving> = None;
            // The parts (frame, part) of the frame being delivered, and the frames completed.
            let mut current: Option<Vec<(usize, usize)>> = None;
            let mut completed = Vec::new();
            for (frame, fates) in frames.iter().enumerate() {
                for (part, (kind, fate)) in kinds(fates.len()).into_iter().zip(fates).enumerate() {
                    if matches!(fate, Fate::Refused) {
                        break;
                    }
                    let Some(seq) = sending.plan(kind) else { continue };
                    if matches!(fate, Fate::Fails) {
                        sending.failed(kind);
                        continue;
                    }
                    sending.sent(kind);
                    if matches!(fate, Fate::Lost) {
                        continue;
                    }
                    let receiving = receiving.get_or_insert_with(|| Receiving::new(seq));
                    let verdict = receiving.receive(seq, kind);
                    if verdict.cut {
                        current = None;
                    }
                    if verdict.deliver {
                        if kind.starts_frame() {
                            prop_assert!(current.is_none(), "frame {frame} spliced onto another");
                            current = Some(Vec::new());
                        }
                        let Some(parts) = current.as_mut() else {
                            return Err(TestCaseError::fail("a part delivered outside a frame"));
                        };
                        parts.push((frame, part));
                        receiving.delivered(kind, true);
                        if kind.ends_frame() {
                            completed.push(current.take());
                        }
                    }
                    if matches!(fate, Fate::ThenLinkDrops) && receiving.cut() {
                        current = None;
                    }
                }
            }
            let mut last = None;
            for parts in completed.into_iter().flatten() {
                let frame = parts[0].0;
                let whole: Vec<(usize, usize)> =
                    (0..frames[frame].len()).map(|part| (frame, part)).collect();
                prop_assert_eq!(&parts, &whole, "frame {} delivered with parts missing", frame);
                prop_assert!(last < Some(frame), "frame {} out of order or twice", frame);
                last = Some(frame);
            }
        }
    }

    #[test]
    fn a_failed_part_uses_its_number_and_skips_the_rest_of_its_frame() {
        use PieceKind::*;
        let mut sending = Sending::default();
        assert_eq!(sending.plan(First), Some(1));
        sending.sent(First);
        assert_eq!(sending.plan(Middle), Some(2));
        assert!(sending.failed(Middle), "the frame had begun");
        assert_eq!(sending.plan(Middle), None);
        assert_eq!(sending.plan(Last), None);
        assert_eq!(sending.plan(Whole), Some(3), "2 is a gap");
        let mut receiving = Receiving::new(1);
        assert!(receiving.receive(1, First).deliver);
        receiving.delivered(First, true);
        assert_eq!(
            receiving.receive(3, Whole),
            Verdict {
                cut: true,
                deliver: true
            }
        );
    }

    #[test]
    fn a_frame_left_open_leaves_a_gap_before_the_next() {
        use PieceKind::*;
        let mut sending = Sending::default();
        assert_eq!(sending.plan(First), Some(1));
        sending.sent(First);
        // Its Middle and Last were never offered (link down at the publisher).
        assert_eq!(sending.plan(First), Some(3));
    }
}
