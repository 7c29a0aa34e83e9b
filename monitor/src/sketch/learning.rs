//! When a rule's learning period began: the earliest event time it has seen. Rules that learn
//! what the fleet shares first judge nothing until this clock says a day has passed.

use serde::{Deserialize, Serialize};

/// The earliest record start seen (a newtype over `Option<u64>`, so saved rule state keeps its
/// encoding).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LearningClock(Option<u64>);

impl LearningClock {
    /// Notes a record that starts at `start` and says whether one ending at `end` is within
    /// `seconds` of the earliest start seen so far. Records arrive out of order: an earlier
    /// start moves the clock back, from the next record on.
    pub fn learning(&mut self, start: u64, end: u64, seconds: u64) -> bool {
        let first = *self.0.get_or_insert(start);
        if start < first {
            self.0 = Some(start);
        }
        // Event times come from the input: a start near 2^64 must not overflow.
        end < first.saturating_add(seconds)
    }

    /// The event time the learning period of `seconds` ends at, once a record was seen.
    pub fn ends(&self, seconds: u64) -> Option<u64> {
        self.0.map(|first| first.saturating_add(seconds))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_from_the_earliest_start_and_keeps_the_encoding() {
        let mut c = LearningClock::default();
        assert!(c.learning(1_000, 1_060, 100));
        assert!(!c.learning(1_100, 1_160, 100));
        // A late record from before: the clock moves back, judged from the next record on.
        assert!(!c.learning(500, 1_160, 100));
        assert!(c.learning(550, 590, 100));
        assert!(!c.learning(550, 600, 100));
        assert!(!c.learning(u64::MAX - 1, u64::MAX, 100));
        assert_eq!(
            postcard::to_stdvec(&c).unwrap(),
            postcard::to_stdvec(&Some(500u64)).unwrap()
        );
    }
}
