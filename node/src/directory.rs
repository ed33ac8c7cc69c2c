//! The number directory: every tracking number (and every advertiser's line limit) in
//! memory, so an INVITE is routed without a store round trip. Loaded at start; kept
//! current by the provisioning feed (`crate::provisioning`): the node whose API wrote
//! an entry refreshes it at once, the others when the change reaches them.

use prometheus_client::metrics::gauge::Gauge;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use tsunagu_store::{LineLimit, Store, StoreError, TrackingNumber};

/// Numbers by number, line limits by advertiser, and the numbers whose settings could
/// not be read.
type Maps = (
    HashMap<String, Arc<TrackingNumber>>,
    HashMap<String, LineLimit>,
    HashSet<String>,
);

#[derive(Clone)]
pub struct Directory {
    store: Arc<dyn Store>,
    numbers: Arc<RwLock<HashMap<String, Arc<TrackingNumber>>>>,
    /// Line limits by advertiser id.
    advertiser_lines: Arc<RwLock<HashMap<String, LineLimit>>>,
    /// Numbers whose stored settings this node could not read when it last read them
    /// (`tsunagu_numbers_unreadable` counts them).
    unreadable: Arc<Mutex<HashSet<String>>>,
    unreadable_gauge: Gauge,
}

impl Directory {
    /// Everything from the store; `unreadable` counts the numbers left out (see
    /// [`Directory::read_all`]).
    pub fn load(store: Arc<dyn Store>, unreadable: Gauge) -> Result<Directory, StoreError> {
        let (numbers, lines, left_out) = Directory::read_all(&*store)?;
        let directory = Directory {
            store,
            numbers: Arc::new(RwLock::new(numbers)),
            advertiser_lines: Arc::new(RwLock::new(lines)),
            unreadable: Arc::default(),
            unreadable_gauge: unreadable,
        };
        directory.set_unreadable(|set| *set = left_out);
        Ok(directory)
    }

    /// Every number, line limits, and the numbers this version cannot read (written
    /// by a newer one, or damaged): those are left out of the map and logged, and the
    /// others route (one such row used to stop the node from starting). What becomes
    /// of them is the caller's: left out at start (404), kept on their last readable
    /// settings by a reload.
    fn read_all(store: &dyn Store) -> Result<Maps, StoreError> {
        let mut left_out = HashSet::new();
        let numbers = store
            .all_numbers()?
            .into_iter()
            .filter_map(|(number, read)| match read {
                Ok(n) => Some((number, Arc::new(n))),
                Err(e) => {
                    tracing::error!(%e, "a tracking number's settings cannot be read: left out");
                    left_out.insert(number);
                    None
                }
            })
            .collect();
        let lines = store
            .advertisers_with_lines()?
            .into_iter()
            .filter_map(|a| Some((a.id, a.lines?)))
            .collect();
        Ok((numbers, lines, left_out))
    }

    /// Records which numbers are unreadable now (and the gauge).
    fn set_unreadable(&self, change: impl FnOnce(&mut HashSet<String>)) {
        let mut set = self.unreadable.lock().unwrap_or_else(|p| p.into_inner());
        change(&mut set);
        self.unreadable_gauge
            .set(i64::try_from(set.len()).unwrap_or(i64::MAX));
    }

    /// Reads everything again (a node that fell too far behind the change feed). A
    /// number loaded before and unreadable now keeps its last readable settings (as
    /// [`Directory::refresh`] keeps them).
    pub fn reload(&self) -> Result<(), StoreError> {
        let (mut numbers, lines, left_out) = Directory::read_all(&*self.store)?;
        {
            let current = self.numbers.read().unwrap_or_else(|p| p.into_inner());
            for number in &left_out {
                if let Some(n) = current.get(number) {
                    numbers.insert(number.clone(), n.clone());
                }
            }
        }
        self.set_unreadable(|set| *set = left_out);
        *self.numbers.write().unwrap_or_else(|p| p.into_inner()) = numbers;
        *self
            .advertiser_lines
            .write()
            .unwrap_or_else(|p| p.into_inner()) = lines;
        Ok(())
    }

    /// The line limit over all of an advertiser's numbers, if it has one.
    pub fn advertiser_lines(&self, id: &str) -> Option<LineLimit> {
        self.advertiser_lines
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .copied()
    }

    /// Re-reads one advertiser's line limit (after a create or update).
    pub fn refresh_advertiser(&self, operator_id: &str, id: &str) -> tsunagu_store::Result<()> {
        let found = self.store.get_advertiser(operator_id, id)?;
        let mut map = self
            .advertiser_lines
            .write()
            .unwrap_or_else(|p| p.into_inner());
        match found.and_then(|a| a.lines) {
            Some(l) => map.insert(id.to_string(), l),
            None => map.remove(id),
        };
        Ok(())
    }

    pub fn get(&self, number: &str) -> Option<Arc<TrackingNumber>> {
        self.numbers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(number)
            .cloned()
    }

    /// Re-reads one number from the store (after a create, update or delete). One
    /// this version cannot read now (a newer node wrote it during an upgrade) keeps
    /// routing on its last readable settings, counted unreadable until it is written
    /// readably or the node upgraded (it was neither counted nor alerted on, and its
    /// recovery left the gauge and the alert up until a restart: a review).
    pub fn refresh(&self, number: &str) -> tsunagu_store::Result<()> {
        let found = match self.store.get_number(number) {
            Err(e @ StoreError::Corrupt(_)) => {
                self.set_unreadable(|set| {
                    set.insert(number.to_string());
                });
                return Err(e);
            }
            other => other?,
        };
        self.set_unreadable(|set| {
            set.remove(number);
        });
        let mut map = self.numbers.write().unwrap_or_else(|p| p.into_inner());
        match found {
            Some(n) => map.insert(number.to_string(), Arc::new(n)),
            None => map.remove(number),
        };
        Ok(())
    }
}
