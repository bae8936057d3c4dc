//! Isolating what Segment refuses: one routine shared by the spooled sender and the
//! synchronous mode.
//!
//! Segment answers 400 (or 413) for a whole batch when one message in it is malformed or too
//! large, without saying which. Dead-lettering the whole batch would lose up to 2,500 good
//! events for one bad one, so a refused batch is bisected: each half is resent, accepted halves
//! are done, refused halves are split again, until the refused messages stand alone. One bad
//! message among `n` costs about `2 log2(n)` extra requests (24 for a full batch).

use std::ops::Range;

use segment::DeliveryError;

/// What became of one group (a message, or all messages of one request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Accepted by Segment.
    Delivered,
    /// Refused alone in its batch: retrying cannot help, dead-letter it.
    Refused,
    /// Not settled: the deadline came first (the caller keeps it, or answers 503).
    Undelivered,
}

/// The result of a [`Bisection`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Isolated {
    /// One fate per group, in order.
    pub fates: Vec<Fate>,
    /// Set when the deadline ended the delivery; groups not yet settled are `Undelivered`.
    pub deadline: Option<DeliveryError>,
}

impl Isolated {
    /// Indexes of the refused groups, in order.
    pub fn refused(&self) -> impl Iterator<Item = usize> + '_ {
        self.fates
            .iter()
            .enumerate()
            .filter(|(_, fate)| **fate == Fate::Refused)
            .map(|(i, _)| i)
    }
}

/// Drives the bisection: the caller sends each range [`Bisection::next_range`] hands out as one batch
/// (retrying it until accepted, refused or a deadline) and reports the result with
/// [`Bisection::record`]. Ranges come left to right, so accepted groups keep their order.
///
/// A state machine rather than a function taking an async closure, so the caller's future
/// stays `Send` without boxing.
#[derive(Debug)]
pub struct Bisection {
    fates: Vec<Fate>,
    /// Ranges still to send, the leftmost on top.
    todo: Vec<Range<usize>>,
    deadline: Option<DeliveryError>,
}

impl Bisection {
    /// Starts with all `groups` groups as one batch.
    pub fn new(groups: usize) -> Self {
        let mut todo = Vec::with_capacity(16);
        if groups > 0 {
            todo.push(0..groups);
        }
        Self {
            fates: vec![Fate::Undelivered; groups],
            todo,
            deadline: None,
        }
    }

    /// The next range of groups to send as one batch, `None` when done.
    pub fn next_range(&mut self) -> Option<Range<usize>> {
        self.todo.pop()
    }

    /// Records the result of sending `range`: accepted groups are done, a refused single group
    /// is refused, a refused range is split in two, a deadline ends everything.
    pub fn record(&mut self, range: Range<usize>, result: &Result<u32, DeliveryError>) {
        match result {
            Ok(_) => self.fates[range].fill(Fate::Delivered),
            Err(DeliveryError::Rejected { .. }) if range.len() == 1 => {
                self.fates[range.start] = Fate::Refused;
            }
            Err(DeliveryError::Rejected { .. }) => {
                let mid = range.start + range.len() / 2;
                self.todo.push(mid..range.end);
                self.todo.push(range.start..mid);
            }
            Err(e @ DeliveryError::DeadlineExceeded { .. }) => {
                self.todo.clear();
                self.deadline = Some(e.clone());
            }
        }
    }

    /// The fate of every group.
    pub fn finish(self) -> Isolated {
        Isolated {
            fates: self.fates,
            deadline: self.deadline,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use segment::SendError;

    fn rejected() -> DeliveryError {
        DeliveryError::Rejected {
            status: 400,
            reason: "HTTP 400".into(),
            attempts: 1,
        }
    }

    /// A fake destination refusing every batch holding one of `bad`.
    fn run(groups: usize, bad: &[usize]) -> (Isolated, Vec<Range<usize>>) {
        let mut sent = Vec::new();
        let mut bisection = Bisection::new(groups);
        // Bounded: each group is sent at most once per level of the bisection.
        for _ in 0..=(4 * groups) {
            let Some(range) = bisection.next_range() else {
                break;
            };
            sent.push(range.clone());
            let result = if bad.iter().any(|b| range.contains(b)) {
                Err(rejected())
            } else {
                Ok(1)
            };
            bisection.record(range, &result);
        }
        assert!(bisection.next_range().is_none(), "bisection did not finish");
        (bisection.finish(), sent)
    }

    #[test]
    fn one_bad_message_costs_a_few_requests_not_the_batch() {
        let (isolated, sent) = run(2500, &[1234]);
        assert_eq!(isolated.refused().collect::<Vec<_>>(), [1234]);
        assert!(isolated.deadline.is_none());
        assert_eq!(
            isolated
                .fates
                .iter()
                .filter(|f| **f == Fate::Delivered)
                .count(),
            2499
        );
        assert!(sent.len() <= 2 * 12 + 1, "{} requests", sent.len());
        // Accepted ranges go out left to right (arrival order).
        let delivered: Vec<_> = sent.iter().filter(|r| !r.contains(&1234)).collect();
        assert!(delivered.windows(2).all(|w| w[0].end <= w[1].start));
    }

    #[test]
    fn all_good_is_one_request_and_all_bad_isolates_each() {
        let (isolated, sent) = run(10, &[]);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0], 0..10);
        assert!(isolated.fates.iter().all(|f| *f == Fate::Delivered));
        let (isolated, _) = run(7, &[0, 1, 2, 3, 4, 5, 6]);
        assert_eq!(isolated.refused().count(), 7);
        let (isolated, sent) = run(0, &[]);
        assert!(isolated.fates.is_empty() && sent.is_empty());
    }

    #[test]
    fn a_deadline_leaves_the_rest_undelivered() {
        let mut bisection = Bisection::new(8);
        let first = bisection.next_range().unwrap();
        assert_eq!(first, 0..8);
        bisection.record(first, &Err(rejected()));
        let left = bisection.next_range().unwrap();
        assert_eq!(left, 0..4);
        bisection.record(left, &Ok(1));
        let right = bisection.next_range().unwrap();
        bisection.record(
            right,
            &Err(DeliveryError::DeadlineExceeded {
                attempts: 1,
                last: SendError::Retryable {
                    status: Some(503),
                    retry_after: None,
                    reason: "HTTP 503".into(),
                },
            }),
        );
        assert!(bisection.next_range().is_none());
        let isolated = bisection.finish();
        assert!(isolated.deadline.is_some());
        assert_eq!(&isolated.fates[..4], &[Fate::Delivered; 4]);
        assert_eq!(&isolated.fates[4..], &[Fate::Undelivered; 4]);
    }
}
