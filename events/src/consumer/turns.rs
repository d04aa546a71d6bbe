//! Per-key order: events of one partition key are handled one after another. Each delivery of a
//! key waits for the end of the one queued before it, which comes when that one is settled in
//! Redis (or given up), not merely when its handler returns.

use std::collections::HashMap;

use tokio::sync::oneshot;
use tokio::sync::oneshot::error::TryRecvError;

/// The end of the last delivery queued per stream and key.
#[derive(Debug)]
pub(crate) struct KeyTurns {
    last: HashMap<(usize, Vec<u8>), oneshot::Receiver<()>>,
    /// Past this many keys, ended turns are dropped; at least the number of deliveries that can
    /// be in flight, so the map stays that small however many keys pass.
    prune_at: usize,
    in_flight: usize,
}

impl KeyTurns {
    /// Turns for at most `in_flight` deliveries at a time.
    pub(crate) fn new(in_flight: usize) -> Self {
        Self {
            last: HashMap::new(),
            prune_at: 2 * in_flight.max(1),
            in_flight: in_flight.max(1),
        }
    }

    /// Queues a delivery of `key` of the stream at `stream_index`: returns what it waits for (the
    /// end of the one before, if that is not over) and its own turn, to drop once it is settled.
    pub(crate) fn queue(
        &mut self,
        stream_index: usize,
        key: Vec<u8>,
    ) -> (Option<oneshot::Receiver<()>>, oneshot::Sender<()>) {
        if self.last.len() >= self.prune_at {
            self.last
                .retain(|_, end| matches!(end.try_recv(), Err(TryRecvError::Empty)));
            self.prune_at = 2 * self.last.len().max(self.in_flight);
        }
        let (turn, end) = oneshot::channel();
        (self.last.insert((stream_index, key), end), turn)
    }

    /// How many keys are remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.last.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_waits_for_the_one_before_it() {
        let mut turns = KeyTurns::new(4);
        let (none, first) = turns.queue(0, b"k".to_vec());
        assert!(none.is_none());
        let (Some(mut after_first), _second) = turns.queue(0, b"k".to_vec()) else {
            panic!("the second of a key waits for the first");
        };
        let (other, _) = turns.queue(1, b"k".to_vec());
        assert!(other.is_none(), "keys are per stream");
        assert!(matches!(after_first.try_recv(), Err(TryRecvError::Empty)));
        drop(first);
        assert!(matches!(after_first.try_recv(), Err(TryRecvError::Closed)));
    }

    #[test]
    fn the_map_stays_as_small_as_the_deliveries_in_flight() {
        let mut turns = KeyTurns::new(10);
        for key in 0..100_000u32 {
            let (_, turn) = turns.queue(0, key.to_be_bytes().to_vec());
            drop(turn);
        }
        assert!(turns.len() <= 20, "{} keys remembered", turns.len());
        let unsettled: Vec<_> = (0..10u32)
            .map(|key| turns.queue(0, key.to_be_bytes().to_vec()).1)
            .collect();
        for key in 10..100_000u32 {
            drop(turns.queue(0, key.to_be_bytes().to_vec()));
        }
        assert!(turns.len() <= 40, "{} keys remembered", turns.len());
        drop(unsettled);
    }
}
