//! How many long-running reads of the call log run at once, in all and per operator:
//! JSON call searches (`api.max_searches`, `api.max_searches_per_operator`: each holds
//! a store connection and a blocking thread while it scans) and CSV/TSV exports
//! (`api.max_exports`, `api.max_exports_per_operator`: each streams for as long as its
//! client reads). The cap per operator is there so that one operator's slow searches
//! or exports cannot keep every other operator's answered 503. A permit is held by the
//! work itself (the scan, the exporter task) and given back when it ends, whether its
//! request is still waiting or not.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The searches (or the exports) running now.
#[derive(Debug)]
pub struct RunLimits {
    total: Arc<Semaphore>,
    per_operator: u32,
    /// Running per operator; an operator with none has no entry, so the map holds at
    /// most as many entries as the cap in all.
    running: Mutex<HashMap<String, u32>>,
}

/// One running search's (or export's) place; given back on drop.
#[derive(Debug)]
pub struct RunPermit {
    limits: Arc<RunLimits>,
    operator: String,
    _total: OwnedSemaphorePermit,
}

/// Why a search (or an export) was not started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The cap in all is reached (`api.max_searches`, `api.max_exports`).
    Node,
    /// The operator is at its own cap (`api.max_searches_per_operator`,
    /// `api.max_exports_per_operator`).
    Operator,
}

impl RunLimits {
    pub fn new(total: u32, per_operator: u32) -> Arc<RunLimits> {
        Arc::new(RunLimits {
            total: Arc::new(Semaphore::new(total as usize)),
            per_operator,
            running: Mutex::new(HashMap::new()),
        })
    }

    /// A place for one more of `operator`'s, or why there is none.
    pub fn try_start(self: &Arc<Self>, operator: &str) -> Result<RunPermit, Refusal> {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let mine = running.get(operator).copied().unwrap_or(0);
        if mine >= self.per_operator {
            return Err(Refusal::Operator);
        }
        let total = self
            .total
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::Node)?;
        running.insert(operator.to_string(), mine + 1);
        Ok(RunPermit {
            limits: self.clone(),
            operator: operator.to_string(),
            _total: total,
        })
    }

    /// Running now, in all.
    pub fn running(&self) -> usize {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|n| *n as usize)
            .sum()
    }
}

impl Drop for RunPermit {
    fn drop(&mut self) {
        let mut running = self
            .limits
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = running.get_mut(&self.operator) {
            *n -= 1;
            if *n == 0 {
                running.remove(&self.operator);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each row: (operator starting a search, expected) with every permit kept.
    #[test]
    fn searches_are_capped_in_all_and_per_operator() {
        let limits = RunLimits::new(3, 2);
        let rows = [
            ("a", Ok(())),
            ("a", Ok(())),
            ("a", Err(Refusal::Operator)),
            ("b", Ok(())),
            ("c", Err(Refusal::Node)),
            ("b", Err(Refusal::Node)),
        ];
        let mut held = Vec::new();
        for (i, (op, want)) in rows.into_iter().enumerate() {
            let got = limits.try_start(op).map(|p| held.push(p));
            assert_eq!(got, want, "row {i}");
        }
        assert_eq!(limits.running(), 3);
        held.truncate(1);
        assert_eq!(limits.running(), 1);
        assert!(limits.try_start("c").is_ok());
        drop(held);
        assert!(
            limits.running.lock().unwrap().is_empty(),
            "no entry left behind"
        );
    }
}
