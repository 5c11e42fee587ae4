//! Events waiting, in arrival order, for their owner and image layer.
//!
//! An event waits while attribution has not yet described its cgroup or
//! the layer worker has not yet answered where its path came from, at most
//! the caller's hold time. What bounds the queue is its memory, not its
//! length: a copy-up event carries its path, name flags and kernel stack
//! on the heap, about 600 bytes in all, and a starved agent on a busy node
//! (the soak under load) can fall behind by tens of thousands of events.
//! Past [`HELD_BUDGET`] bytes the oldest events go out with what is known
//! then; each one that goes out early for that reason is counted.

use crate::event::{KernelEvent, Kind};
use crate::layers::worker::Asked;
use std::collections::VecDeque;
use std::time::Instant;

/// Bytes of events that may wait at once: about 7,000 copy-ups, five
/// seconds of a container starting at full speed in a guest, and a tenth
/// of the 40 MiB the agent is to stay under.
pub const HELD_BUDGET: usize = 4 << 20;

/// An event waiting, in order, for its owner and its layer.
pub struct Held {
    pub since: Instant,
    pub ev: KernelEvent,
    /// Its layer question, once asked.
    pub layer: Option<Asked>,
}

/// The waiting events, oldest first, with their memory counted.
pub struct HeldQueue {
    q: VecDeque<Held>,
    /// Bytes the events in `q` hold ([`event_bytes`]).
    bytes: usize,
    budget: usize,
    peak_len: usize,
    peak_bytes: usize,
    released_early: u64,
}

/// What the queue reports about itself (the JSON's `agent.held_events`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeldStats {
    pub now: usize,
    pub peak: usize,
    pub peak_bytes: usize,
    /// Events that went out before their owner or layer was known because
    /// the queue was over its budget.
    pub released_early: u64,
}

impl HeldQueue {
    pub fn new(budget: usize) -> Self {
        HeldQueue {
            q: VecDeque::new(),
            bytes: 0,
            budget,
            peak_len: 0,
            peak_bytes: 0,
            released_early: 0,
        }
    }

    pub fn push(&mut self, h: Held) {
        self.bytes += event_bytes(&h.ev);
        self.q.push_back(h);
        self.peak_len = self.peak_len.max(self.q.len());
        self.peak_bytes = self.peak_bytes.max(self.bytes);
    }

    pub fn pop_front(&mut self) -> Option<Held> {
        let h = self.q.pop_front()?;
        self.bytes -= event_bytes(&h.ev);
        Some(h)
    }

    pub fn front_mut(&mut self) -> Option<&mut Held> {
        self.q.front_mut()
    }

    pub fn get_mut(&mut self, i: usize) -> Option<&mut Held> {
        self.q.get_mut(i)
    }

    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }

    pub fn len(&self) -> usize {
        self.q.len()
    }

    /// The events hold more than the budget: the oldest must go out now,
    /// known or not.
    pub fn over_budget(&self) -> bool {
        self.bytes > self.budget
    }

    /// One event went out unknown only because of the budget.
    pub fn count_released_early(&mut self) {
        self.released_early += 1;
    }

    pub fn stats(&self) -> HeldStats {
        HeldStats {
            now: self.q.len(),
            peak: self.peak_len,
            peak_bytes: self.peak_bytes,
            released_early: self.released_early,
        }
    }
}

/// What one event holds in memory: itself and its heap parts, by their
/// capacity (what the allocator gave, not what is used). Its layer
/// question's ticket is counted with the worker's questions.
pub fn event_bytes(ev: &KernelEvent) -> usize {
    let stack = match &ev.kind {
        Kind::CopyUp(c) => c.stack.capacity() * std::mem::size_of::<u64>(),
        _ => 0,
    };
    std::mem::size_of::<Held>()
        + ev.comm.capacity()
        + ev.path.capacity()
        + ev.names_cut.capacity()
        + stack
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Kind;

    fn held(path: &str) -> Held {
        Held {
            since: Instant::now(),
            ev: KernelEvent::plain(Kind::OpaqueDir, path),
            layer: None,
        }
    }

    #[test]
    fn bytes_follow_what_is_queued_and_taken_out() {
        let mut q = HeldQueue::new(HELD_BUDGET);
        let a = held("a/b/c");
        let size = event_bytes(&a.ev);
        assert!(size > std::mem::size_of::<KernelEvent>());
        q.push(a);
        q.push(held("a/b/c"));
        assert_eq!(q.stats().peak_bytes, 2 * size);
        assert_eq!(q.pop_front().unwrap().ev.path, b"a/b/c");
        q.pop_front().unwrap();
        assert!(q.is_empty());
        assert_eq!(q.bytes, 0);
        assert_eq!(q.stats().peak, 2);
    }

    #[test]
    fn a_queue_past_its_budget_says_so_whatever_its_length() {
        let one = event_bytes(&held("x").ev);
        let mut q = HeldQueue::new(10 * one);
        for _ in 0..10 {
            q.push(held("x"));
        }
        assert!(!q.over_budget());
        q.push(held("x"));
        assert!(q.over_budget());
        q.pop_front();
        assert!(!q.over_budget());
        // Long paths fill it sooner: three of 1,000 bytes are over a
        // budget of ten short ones.
        let mut q = HeldQueue::new(10 * one);
        for _ in 0..3 {
            q.push(held(&"long/".repeat(200)));
        }
        assert!(q.over_budget(), "{} bytes, budget {}", q.bytes, 10 * one);
    }

    #[test]
    fn a_copy_up_counts_its_stack() {
        let mut ev = KernelEvent::plain(Kind::OpaqueDir, "f");
        let plain = event_bytes(&ev);
        ev.kind = Kind::CopyUp(crate::event::CopyUp {
            latency_ns: 0,
            op_latency_ns: None,
            parents: 0,
            bytes: 0,
            data: true,
            kind: crate::event::CopyUpKind::Full,
            ancestor: false,
            removed: false,
            links: 1,
            stack: vec![0; 24],
        });
        assert_eq!(event_bytes(&ev), plain + 24 * 8);
    }
}
