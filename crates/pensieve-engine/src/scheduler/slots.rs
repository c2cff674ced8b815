//! Sequence slots: which free slot a new sequence takes, and giving slots back (a slot
//! the prefix cache holds is taken back by evicting its entry).

use crate::model::SeqId;

use super::Scheduler;

impl Scheduler {
    /// Move the least recently used context entry out of the KV cache; false when none.
    pub(super) fn evict_one(&mut self) -> bool {
        match self.cache.evict_context(self.runner.as_mut()) {
            Some(slot) => {
                self.free.push(slot);
                true
            }
            None => false,
        }
    }

    /// A slot for a new sequence: a free one next to the running slots if there is one
    /// (see [`pick_slot`]), else one a cache entry gives up.
    pub(super) fn take_slot(&mut self) -> Option<SeqId> {
        let running: Vec<SeqId> = self.running.iter().filter_map(|a| a.seq).collect();
        match pick_slot(&self.free, &running) {
            Some(i) => Some(self.free.swap_remove(i)),
            None => self.cache.evict_context(self.runner.as_mut()),
        }
    }

    pub(super) fn release_slots(&mut self, slots: Vec<SeqId>) {
        for s in slots {
            self.runner.release(s);
            self.free.push(s);
        }
    }
}

/// Which of the `free` slots a new sequence should take: the one that leaves the running
/// slots in the fewest runs of consecutive ids, the lowest of equals. A batch over
/// consecutive slots is one pass of llama.cpp's per-slot KV streams; every gap adds a
/// pass that reads all the weights again.
fn pick_slot(free: &[SeqId], running: &[SeqId]) -> Option<usize> {
    let taken: std::collections::HashSet<SeqId> = running.iter().copied().collect();
    // Runs after adding `s`: one more, one fewer when `s` joins two, or as many.
    let runs_delta = |s: SeqId| -> i32 {
        let below = s.checked_sub(1).is_some_and(|b| taken.contains(&b));
        let above = s.checked_add(1).is_some_and(|a| taken.contains(&a));
        1 - i32::from(below) - i32::from(above)
    };
    free.iter()
        .enumerate()
        .min_by_key(|&(_, &s)| (runs_delta(s), s))
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::pick_slot;

    fn pick(free: &[u32], running: &[u32]) -> Option<u32> {
        pick_slot(free, running).map(|i| free[i])
    }

    #[test]
    fn a_new_sequence_joins_the_running_slots() {
        // Nothing runs: the lowest slot.
        assert_eq!(pick(&[3, 1, 2], &[]), Some(1));
        // Next to what runs, not the lowest free slot.
        assert_eq!(pick(&[0, 5, 6], &[3, 4]), Some(5));
        assert_eq!(pick(&[0, 2, 7], &[3, 4]), Some(2));
        // Filling a gap joins two runs.
        assert_eq!(pick(&[0, 2, 7], &[1, 3]), Some(2));
        // No neighbour free: the lowest.
        assert_eq!(pick(&[7, 0], &[3, 4]), Some(0));
        assert_eq!(pick(&[], &[1]), None);
    }
}
