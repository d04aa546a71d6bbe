//! The consumer names this process's runs use, per group. Entries pending on a name belong to an
//! earlier run of it, one that stopped or crashed, only when no other run here uses the name: the
//! default name (`<host>-<pid>`) is shared by every consumer this process builds.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, PoisonError};

/// Runs under way, per group and consumer name.
static IN_USE: LazyLock<Mutex<HashMap<(String, String), usize>>> = LazyLock::new(Mutex::default);

/// A run's use of its consumer name in its group, for as long as it lives.
#[derive(Debug)]
pub(crate) struct NameInUse {
    key: (String, String),
}

impl NameInUse {
    /// Starts using `consumer` in `group`; also says whether no other run here uses it.
    pub(crate) fn start(group: &str, consumer: &str) -> (Self, bool) {
        let key = (group.to_owned(), consumer.to_owned());
        let mut in_use = IN_USE.lock().unwrap_or_else(PoisonError::into_inner);
        let runs = in_use.entry(key.clone()).or_default();
        *runs += 1;
        let alone = *runs == 1;
        (Self { key }, alone)
    }

    /// Whether no other run here uses the name now.
    pub(crate) fn is_alone(&self) -> bool {
        let in_use = IN_USE.lock().unwrap_or_else(PoisonError::into_inner);
        in_use.get(&self.key) == Some(&1)
    }
}

impl Drop for NameInUse {
    fn drop(&mut self) {
        let mut in_use = IN_USE.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(runs) = in_use.get_mut(&self.key) {
            *runs -= 1;
            if *runs == 0 {
                in_use.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_alone_only_while_no_other_run_of_its_group_uses_it() {
        let (first, alone) = NameInUse::start("names-test", "a");
        assert!(alone);
        let (second, alone) = NameInUse::start("names-test", "a");
        assert!(!alone, "a second run of the name");
        let (_other_group, alone) = NameInUse::start("names-test-2", "a");
        assert!(alone, "the name in another group");
        drop(first);
        drop(second);
        let (_again, alone) = NameInUse::start("names-test", "a");
        assert!(alone, "once both runs ended");
    }
}
