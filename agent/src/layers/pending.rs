//! The questions held events wait on, and their answers, shared by the
//! event path and the layers worker.
//!
//! Each held event that waits for its layer holds one interest in its
//! question (container, path); several events may wait on the same one.
//! An interest ends when its event takes the answer or gives up waiting.
//! A question (and its answer) lives exactly as long as some event waits
//! on it: an answer that comes after every asker gave up is not kept, and
//! the worker skips a question nobody waits on any more. So what is kept
//! here is bounded by the events held, not by how late the worker is
//! (before, a late answer stayed until 65,536 of them had piled up).

use std::collections::HashMap;
use std::hash::Hash;

/// What [`Pending::want`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// A new question: the caller sends it to the worker.
    Ask,
    /// Already asked (or answered): one more event waits on it.
    Joined,
    /// Full: no interest was taken, the event cannot wait for an answer.
    Full,
}

struct Entry<A> {
    /// Events waiting on this question.
    waiting: u32,
    answer: Option<A>,
}

/// Questions with the number of events waiting on each, and the answers
/// not taken yet.
pub struct Pending<K, A> {
    map: HashMap<K, Entry<A>>,
    cap: usize,
    /// The most questions open at once.
    peak: usize,
}

impl<K: Hash + Eq, A: Clone> Pending<K, A> {
    /// At most `cap` questions at once.
    pub fn new(cap: usize) -> Self {
        Pending {
            map: HashMap::new(),
            cap,
            peak: 0,
        }
    }

    /// One more event waits on `key`.
    pub fn want(&mut self, key: K) -> Want {
        if let Some(e) = self.map.get_mut(&key) {
            e.waiting = e.waiting.saturating_add(1);
            return Want::Joined;
        }
        if self.map.len() >= self.cap {
            return Want::Full;
        }
        self.map.insert(
            key,
            Entry {
                waiting: 1,
                answer: None,
            },
        );
        self.peak = self.peak.max(self.map.len());
        Want::Ask
    }

    /// The answer, if in; taking it ends one interest.
    pub fn take(&mut self, key: &K) -> Option<A> {
        let e = self.map.get_mut(key)?;
        let a = e.answer.clone()?;
        self.release(key);
        Some(a)
    }

    /// Ends one interest without an answer (the event waited long enough);
    /// the answer if it came meanwhile.
    pub fn give_up(&mut self, key: &K) -> Option<A> {
        let a = self.map.get(key).and_then(|e| e.answer.clone());
        self.release(key);
        a
    }

    fn release(&mut self, key: &K) {
        if let Some(e) = self.map.get_mut(key) {
            e.waiting = e.waiting.saturating_sub(1);
            if e.waiting == 0 {
                self.map.remove(key);
            }
        }
    }

    /// Whether some event still waits on `key` (the worker skips the
    /// question otherwise).
    pub fn wanted(&self, key: &K) -> bool {
        self.map.contains_key(key)
    }

    /// Stores the answer to `key`, if some event still waits on it; false
    /// when nobody does (the answer is dropped).
    pub fn answer(&mut self, key: &K, a: A) -> bool {
        match self.map.get_mut(key) {
            Some(e) => {
                e.answer = Some(a);
                true
            }
            None => false,
        }
    }

    /// Questions open (answered or not).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The most questions that were open at once.
    pub fn peak(&self) -> usize {
        self.peak
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_lives_while_an_event_waits_on_it() {
        let mut p: Pending<u32, &str> = Pending::new(16);
        assert_eq!(p.want(1), Want::Ask);
        assert_eq!(p.want(1), Want::Joined);
        assert_eq!(p.take(&1), None, "not answered yet");
        assert!(p.answer(&1, "layer 0"));
        // Both waiting events get it; then it is gone.
        assert_eq!(p.take(&1), Some("layer 0"));
        assert!(p.wanted(&1));
        assert_eq!(p.take(&1), Some("layer 0"));
        assert!(!p.wanted(&1));
        assert!(p.is_empty());
    }

    #[test]
    fn a_question_given_up_on_is_forgotten_and_its_late_answer_dropped() {
        let mut p: Pending<u32, &str> = Pending::new(16);
        assert_eq!(p.want(7), Want::Ask);
        assert_eq!(p.give_up(&7), None);
        assert!(!p.wanted(&7), "the worker skips it");
        assert!(!p.answer(&7, "late"), "nobody waits: not kept");
        assert!(p.is_empty());
        // Asked again later: a new question.
        assert_eq!(p.want(7), Want::Ask);
        assert!(p.answer(&7, "in time"));
        // Given up by one of two, the other still gets it.
        assert_eq!(p.want(7), Want::Joined);
        assert_eq!(p.give_up(&7), Some("in time"));
        assert_eq!(p.take(&7), Some("in time"));
        assert!(p.is_empty());
    }

    #[test]
    fn late_answers_never_pile_up() {
        // The soak's case: every event gives up before its answer comes.
        // Nothing is left, however many there were.
        let mut p: Pending<(String, Vec<u8>), u64> = Pending::new(65_536);
        for i in 0..200_000u64 {
            let key = (
                "c".repeat(64),
                format!("data/d{}/f{i}", i % 200).into_bytes(),
            );
            assert_eq!(p.want(key.clone()), Want::Ask);
            assert_eq!(p.give_up(&key), None);
            assert!(!p.answer(&key, i));
        }
        assert!(p.is_empty());
    }

    #[test]
    fn past_the_cap_no_interest_is_taken() {
        let mut p: Pending<u32, u32> = Pending::new(3);
        for k in 0..3 {
            assert_eq!(p.want(k), Want::Ask);
        }
        assert_eq!(p.want(3), Want::Full);
        assert!(!p.wanted(&3));
        // Joining an open question still works when full.
        assert_eq!(p.want(0), Want::Joined);
        assert_eq!(p.len(), 3);
        assert_eq!(p.give_up(&1), None);
        assert_eq!(p.want(3), Want::Ask);
    }
}
