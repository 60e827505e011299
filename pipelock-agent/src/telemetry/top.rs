//! Bounded "top N" counters for `/stats` (`top_blocked_domains`,
//! `top_scanners`): counts by name, at most [`MAX_NAMES`] distinct names (a
//! covered pod cannot grow the agent's memory by inventing hosts); counts
//! for names beyond that go to one `(other)` entry.
use std::{collections::HashMap, sync::Mutex};

/// Distinct names kept.
pub const MAX_NAMES: usize = 1024;
/// The entry counting names past [`MAX_NAMES`].
pub const OTHER: &str = "(other)";

/// Counts by name, bounded.
#[derive(Debug, Default)]
pub struct TopCounts {
    counts: Mutex<HashMap<String, u64>>,
}

impl TopCounts {
    /// Counts one occurrence of `name`.
    pub fn inc(&self, name: &str) {
        let mut m = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(name) {
            *n += 1;
        } else if m.len() < MAX_NAMES {
            m.insert(name.to_owned(), 1);
        } else {
            *m.entry(OTHER.to_owned()).or_insert(0) += 1;
        }
    }

    /// The `n` largest counts, largest first (ties by name).
    pub fn top(&self, n: usize) -> Vec<(String, u64)> {
        let m = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<(String, u64)> = m.iter().map(|(k, c)| (k.clone(), *c)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v.truncate(n);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_and_stays_bounded() {
        let t = TopCounts::default();
        for _ in 0..3 {
            t.inc("paste.test");
        }
        t.inc("a.test");
        t.inc("b.test");
        assert_eq!(
            t.top(2),
            vec![("paste.test".into(), 3), ("a.test".into(), 1)]
        );
        for i in 0..(MAX_NAMES + 10) {
            t.inc(&format!("h{i}.test"));
        }
        let all = t.top(usize::MAX);
        assert!(all.len() <= MAX_NAMES + 1);
        assert!(all.iter().any(|(k, c)| k == OTHER && *c >= 10));
    }
}
