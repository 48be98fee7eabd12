//! The soak's leak rule, on the hub's RSS sampled once a second.
//!
//! The hub's RSS rises for about the first minute of a soak while the allocator warms up (8.6 to
//! ~40 MiB), then stays flat. A rule comparing the run's halves measured that warm-up on short
//! runs (a 60 s run failed with the first half's floor 27.9 MiB against the second's 31.2 MiB).
//! So the first third of the run is warm-up and is not judged; the last third's floor (its lowest
//! sample) must stay within [`RSS_SLACK`] times the middle third's. A leak raises every sample,
//! so it raises the floor; a burst of large frames raises the peaks only (the peaks of one
//! 10-minute run swung by a quarter from one minute to the next over a flat floor). A run shorter
//! than [`MIN_VERDICT_SECS`] gets no verdict: its middle third would still be warm-up.

use serde_json::{json, Value};

/// Runs shorter than this get no leak verdict: with a minute of warm-up, a third of 3 minutes
/// holds it.
pub(super) const MIN_VERDICT_SECS: f64 = 180.0;
/// How much the last third's floor may exceed the middle third's.
pub(super) const RSS_SLACK: f64 = 1.1;

/// What the rule found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// The run was shorter than [`MIN_VERDICT_SECS`], or a third had no sample.
    TooShort,
    /// The last third's floor stayed within [`RSS_SLACK`] times the middle third's.
    NoLeak,
    /// The last third's floor grew beyond it.
    Leak,
}

impl Verdict {
    fn name(self) -> &'static str {
        match self {
            Verdict::TooShort => "too short",
            Verdict::NoLeak => "no leak",
            Verdict::Leak => "leak",
        }
    }
}

/// The lowest and highest sample of one third of the run, KiB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Third {
    floor: Option<u64>,
    peak: Option<u64>,
}

/// The RSS of a run judged: each third's floor and peak, and the verdict.
#[derive(Debug)]
pub(super) struct Judgement {
    thirds: [Third; 3],
    /// What the rule found.
    pub(super) verdict: Verdict,
}

/// Judges `samples` (seconds since the start, KiB) of a run of `duration` seconds.
pub(super) fn judge(samples: &[(f64, u64)], duration: f64) -> Judgement {
    let mut thirds = [Third::default(); 3];
    for (index, third) in thirds.iter_mut().enumerate() {
        let from = duration * index as f64 / 3.0;
        let to = duration * (index + 1) as f64 / 3.0;
        let kib = || {
            samples
                .iter()
                .filter(move |(at, _)| (from..to).contains(at))
                .map(|(_, kib)| *kib)
        };
        *third = Third {
            floor: kib().min(),
            peak: kib().max(),
        };
    }
    let verdict = match (thirds[1].floor, thirds[2].floor) {
        (Some(middle), Some(last)) if duration >= MIN_VERDICT_SECS => {
            if last as f64 > middle as f64 * RSS_SLACK {
                Verdict::Leak
            } else {
                Verdict::NoLeak
            }
        }
        _ => Verdict::TooShort,
    };
    Judgement { thirds, verdict }
}

impl Judgement {
    /// The violation to report, for a leak.
    pub(super) fn violation(&self) -> Option<String> {
        let (middle, last) = (self.thirds[1].floor?, self.thirds[2].floor?);
        (self.verdict == Verdict::Leak).then(|| {
            format!(
                "RSS grew after warm-up: the last third's floor {last} KiB > {RSS_SLACK} x the \
                 middle third's {middle} KiB"
            )
        })
    }

    /// The figures for the JSON report.
    pub(super) fn json(&self) -> Value {
        let thirds: Vec<Value> = self
            .thirds
            .iter()
            .map(|third| json!({"floor": third.floor, "peak": third.peak}))
            .collect();
        json!({
            "thirds": thirds,
            "verdict": self.verdict.name(),
            "min_verdict_s": MIN_VERDICT_SECS,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One sample a second for `duration` seconds, of `kib(second)`.
    fn series(duration: u64, kib: impl Fn(f64) -> f64) -> Vec<(f64, u64)> {
        (0..duration)
            .map(|second| {
                let at = second as f64;
                (at, kib(at) as u64)
            })
            .collect()
    }

    /// Allocator warm-up: 8.6 MiB rising to 40 MiB over the first minute, then `after(t)`.
    fn warm_then(after: impl Fn(f64) -> f64) -> impl Fn(f64) -> f64 {
        move |t| {
            if t < 60.0 {
                8_800.0 + (40_960.0 - 8_800.0) * t / 60.0
            } else {
                after(t)
            }
        }
    }

    /// Bursts of large frames: a peak of +25 MiB every 37 s, for 5 s.
    fn bursts(t: f64) -> f64 {
        if t % 37.0 < 5.0 {
            25_600.0
        } else {
            0.0
        }
    }

    #[test]
    fn warm_up_then_flat_passes() {
        for duration in [180, 300, 600] {
            for burst in [0.0, 1.0] {
                let rss = series(duration, warm_then(|t| 40_960.0 + burst * bursts(t)));
                let judged = judge(&rss, duration as f64);
                assert_eq!(judged.verdict, Verdict::NoLeak, "{duration} s: {judged:?}");
                assert_eq!(judged.violation(), None);
            }
        }
    }

    #[test]
    fn steady_growth_fails() {
        // At 40 MiB, the smallest steady leak the rule sees is about 22 KiB/s over 10 minutes
        // (13 MiB in all) and 70 KiB/s over 3 minutes: the last third's floor must pass the
        // middle third's by 10 %.
        for (duration, rate) in [(600, 25.0), (180, 80.0)] {
            let rss = series(
                duration,
                warm_then(|t| 40_960.0 + (t - 60.0) * rate + bursts(t)),
            );
            let judged = judge(&rss, duration as f64);
            assert_eq!(judged.verdict, Verdict::Leak, "{duration} s: {judged:?}");
            let violation = judged.violation().unwrap_or_default();
            assert!(violation.contains("RSS grew after warm-up"), "{violation}");
        }
    }

    #[test]
    fn short_runs_get_no_verdict() {
        // The 60 s run: its second half held the end of the warm-up.
        for duration in [30, 60, 179] {
            let rss = series(duration, warm_then(|_| 40_960.0));
            let judged = judge(&rss, duration as f64);
            assert_eq!(judged.verdict, Verdict::TooShort, "{duration} s");
            assert_eq!(judged.violation(), None);
        }
        assert_eq!(judge(&[], 600.0).verdict, Verdict::TooShort);
    }
}
