//! The queue between request handlers and the spool's writer thread.
//!
//! A channel wakes its receiver on every message. Group commit wants the opposite: while the
//! writer waits for the requests it expects in the next group, each of them arriving would
//! wake it (a futex call and two context switches each, on a core the handlers share), only
//! for it to find the group still incomplete and sleep again. Here the writer says what it
//! waits for ([`Want`]) and a producer wakes it only once that is there: one wake-up per group
//! instead of one per request.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

/// How an item bears on the writer's wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Counted toward [`Want::counted`] (appends: what a group is made of).
    Counted,
    /// Work that may wait (removals, dead letters): wakes the writer only with [`Want::lazy`].
    Lazy,
    /// Always wakes the writer (shutdown).
    Urgent,
}

/// What the writer waits for; any one of them wakes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Want {
    /// At least this many [`Kind::Counted`] items queued.
    pub counted: usize,
    /// Any item at all.
    pub lazy: bool,
    /// At least this many items of any kind queued.
    pub items: usize,
}

/// Why [`GroupQueue::wait`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woken {
    /// What was wanted is queued.
    Ready,
    /// The deadline passed first (the queue may still hold items).
    Timeout,
    /// Every producer is gone (the queue may still hold items).
    Closed,
}

#[derive(Debug)]
struct State<T> {
    items: Vec<T>,
    counted: usize,
    urgent: bool,
    /// What the writer, asleep, waits for; `None` while it works (no one to wake).
    want: Option<Want>,
    /// No producer will push again.
    closed: bool,
    /// The writer is gone: pushes are refused.
    receiver_gone: bool,
}

impl<T> State<T> {
    fn satisfies(&self, want: Want) -> bool {
        self.urgent
            || self.counted >= want.counted
            || (want.lazy && !self.items.is_empty())
            || self.items.len() >= want.items
    }
}

/// A multi-producer, single-consumer queue whose consumer is woken only when what it waits
/// for is there.
#[derive(Debug)]
pub struct GroupQueue<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
}

impl<T> Default for GroupQueue<T> {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                items: Vec::new(),
                counted: 0,
                urgent: false,
                want: None,
                closed: false,
                receiver_gone: false,
            }),
            ready: Condvar::new(),
        }
    }
}

impl<T> GroupQueue<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A panic while holding the lock leaves the state consistent (plain pushes and drains).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `item`, waking the writer if that completes what it waits for. Gives the item
    /// back when the writer is gone.
    pub fn push(&self, item: T, kind: Kind) -> Result<(), T> {
        let mut s = self.lock();
        if s.receiver_gone {
            return Err(item);
        }
        s.items.push(item);
        match kind {
            Kind::Counted => s.counted += 1,
            Kind::Urgent => s.urgent = true,
            Kind::Lazy => {}
        }
        if let Some(want) = s.want
            && s.satisfies(want)
        {
            s.want = None;
            drop(s);
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Writer: blocks until `want` is satisfied, every producer is gone, or `deadline` passes.
    pub fn wait(&self, want: Want, deadline: Option<Instant>) -> Woken {
        let mut s = self.lock();
        loop {
            if s.satisfies(want) {
                s.want = None;
                return Woken::Ready;
            }
            if s.closed {
                s.want = None;
                return Woken::Closed;
            }
            s.want = Some(want);
            s = match deadline {
                None => self.ready.wait(s).unwrap_or_else(PoisonError::into_inner),
                Some(at) => {
                    let left = at.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        s.want = None;
                        return Woken::Timeout;
                    }
                    self.ready
                        .wait_timeout(s, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
    }

    /// Writer: moves up to `max` queued items to `out`, oldest first; `counted` tells the
    /// [`Kind::Counted`] ones apart.
    pub fn drain_into(&self, out: &mut Vec<T>, max: usize, counted: impl Fn(&T) -> bool) {
        let mut s = self.lock();
        let n = s.items.len().min(max);
        let taken = s.items.drain(..n);
        let mut taken_counted = 0;
        for item in taken {
            if counted(&item) {
                taken_counted += 1;
            }
            out.push(item);
        }
        s.counted -= taken_counted;
        if s.items.is_empty() {
            s.urgent = false;
        }
    }

    /// Producers: no more pushes will come; wakes the writer.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }

    /// Writer: it is gone; refuses every later push and hands back what is still queued.
    pub fn close_receiver(&self) -> Vec<T> {
        let mut s = self.lock();
        s.receiver_gone = true;
        s.counted = 0;
        s.urgent = false;
        std::mem::take(&mut s.items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    const ANY: Want = Want {
        counted: 1,
        lazy: true,
        items: usize::MAX,
    };

    fn counted(n: usize) -> Want {
        Want {
            counted: n,
            lazy: false,
            items: usize::MAX,
        }
    }

    #[test]
    fn the_writer_sleeps_until_the_group_it_expects_is_complete() {
        let q = Arc::new(GroupQueue::<u32>::default());
        let waiter = {
            let q = Arc::clone(&q);
            std::thread::spawn(move || {
                let woken = q.wait(counted(3), None);
                let mut out = Vec::new();
                q.drain_into(&mut out, usize::MAX, |_| true);
                (woken, out)
            })
        };
        for i in 0..3 {
            // Wait for the writer to be asleep, then check it stays asleep until the third.
            while q.lock().want.is_none() {
                std::thread::yield_now();
            }
            assert!(!waiter.is_finished());
            q.push(i, Kind::Counted).unwrap();
        }
        let (woken, out) = waiter.join().unwrap();
        assert_eq!(woken, Woken::Ready);
        assert_eq!(out, [0, 1, 2]);
    }

    #[test]
    fn lazy_items_wake_only_a_writer_that_wants_anything() {
        let q = GroupQueue::<u32>::default();
        q.push(1, Kind::Lazy).unwrap();
        let soon = Some(Instant::now() + Duration::from_millis(20));
        assert_eq!(q.wait(counted(1), soon), Woken::Timeout);
        assert_eq!(q.wait(ANY, soon), Woken::Ready);
        // Enough of them wake it anyway.
        let bounded = Want {
            items: 2,
            ..counted(5)
        };
        assert_eq!(q.wait(bounded, soon), Woken::Timeout);
        q.push(2, Kind::Lazy).unwrap();
        assert_eq!(q.wait(bounded, soon), Woken::Ready);
        // Urgent items always do, until drained.
        q.push(3, Kind::Urgent).unwrap();
        assert_eq!(q.wait(counted(100), None), Woken::Ready);
        let mut out = Vec::new();
        q.drain_into(&mut out, usize::MAX, |_| false);
        assert_eq!(out, [1, 2, 3]);
        assert_eq!(q.wait(counted(1), soon), Woken::Timeout);
    }

    #[test]
    fn drains_are_bounded_and_keep_the_count_of_what_stays() {
        let q = GroupQueue::<u32>::default();
        for i in 0..5 {
            q.push(
                i,
                if i % 2 == 0 {
                    Kind::Counted
                } else {
                    Kind::Lazy
                },
            )
            .unwrap();
        }
        let mut out = Vec::new();
        q.drain_into(&mut out, 2, |i| i % 2 == 0);
        assert_eq!(out, [0, 1]);
        // Items 2 and 4 are the counted ones left.
        let now = Some(Instant::now());
        assert_eq!(q.wait(counted(2), now), Woken::Ready);
        assert_eq!(q.wait(counted(3), now), Woken::Timeout);
    }

    #[test]
    fn closing_wakes_the_writer_and_a_gone_writer_refuses_pushes() {
        let q = Arc::new(GroupQueue::<u32>::default());
        let waiter = {
            let q = Arc::clone(&q);
            std::thread::spawn(move || q.wait(ANY, None))
        };
        while q.lock().want.is_none() {
            std::thread::yield_now();
        }
        q.close();
        assert_eq!(waiter.join().unwrap(), Woken::Closed);
        q.push(7, Kind::Counted).unwrap();
        assert_eq!(q.close_receiver(), [7]);
        assert_eq!(q.push(8, Kind::Counted), Err(8));
    }
}
