//! The number directory: every tracking number (and every advertiser's line limit) in
//! memory, so an INVITE is routed without a store round trip. Loaded at start; kept
//! current by the provisioning feed (`crate::provisioning`): the node whose API wrote
//! an entry refreshes it at once, the others when the change reaches them.

use prometheus_client::metrics::gauge::Gauge;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use tsunagu_store::{LineLimit, Store, StoreError, TrackingNumber};

/// Numbers by number, and line limits by advertiser.
type Maps = (
    HashMap<String, Arc<TrackingNumber>>,
    HashMap<String, LineLimit>,
);

#[derive(Clone)]
pub struct Directory {
    store: Arc<dyn Store>,
    numbers: Arc<RwLock<HashMap<String, Arc<TrackingNumber>>>>,
    /// Line limits by advertiser id.
    advertiser_lines: Arc<RwLock<HashMap<String, LineLimit>>>,
    /// Numbers whose stored settings this node could not read at the last full load
    /// (`tsunagu_numbers_unreadable`).
    unreadable: Gauge,
}

impl Directory {
    /// Everything from the store; `unreadable` counts the numbers left out (see
    /// [`Directory::read_all`]).
    pub fn load(store: Arc<dyn Store>, unreadable: Gauge) -> Result<Directory, StoreError> {
        let (numbers, lines) = Directory::read_all(&*store, &unreadable)?;
        Ok(Directory {
            store,
            numbers: Arc::new(RwLock::new(numbers)),
            advertiser_lines: Arc::new(RwLock::new(lines)),
            unreadable,
        })
    }

    /// A number this version cannot read (written by a newer one, or damaged) is left
    /// out, logged and counted: calls to it get 404 until it is written again, and the
    /// others route (one such row used to stop the node from starting).
    fn read_all(store: &dyn Store, unreadable: &Gauge) -> Result<Maps, StoreError> {
        let mut left_out = 0;
        let numbers = store
            .all_numbers()?
            .into_iter()
            .filter_map(|n| {
                n.inspect_err(|e| {
                    left_out += 1;
                    tracing::error!(%e, "a tracking number's settings cannot be read: left out");
                })
                .ok()
            })
            .map(|n| (n.number.clone(), Arc::new(n)))
            .collect();
        unreadable.set(left_out);
        let lines = store
            .advertisers_with_lines()?
            .into_iter()
            .filter_map(|a| Some((a.id, a.lines?)))
            .collect();
        Ok((numbers, lines))
    }

    /// Reads everything again (a node that fell too far behind the change feed).
    pub fn reload(&self) -> Result<(), StoreError> {
        let (numbers, lines) = Directory::read_all(&*self.store, &self.unreadable)?;
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

    /// Re-reads one number from the store (after a create, update or delete).
    pub fn refresh(&self, number: &str) -> tsunagu_store::Result<()> {
        let found = self.store.get_number(number)?;
        let mut map = self.numbers.write().unwrap_or_else(|p| p.into_inner());
        match found {
            Some(n) => map.insert(number.to_string(), Arc::new(n)),
            None => map.remove(number),
        };
        Ok(())
    }
}
