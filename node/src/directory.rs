//! The number directory: every tracking number (and every advertiser's line limit) in
//! memory, so an INVITE is routed without a store round trip. Loaded at start; kept
//! current by the provisioning feed (`crate::provisioning`): the node whose API wrote
//! an entry refreshes it at once, the others when the change reaches them.

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
}

impl Directory {
    pub fn load(store: Arc<dyn Store>) -> Result<Directory, StoreError> {
        let (numbers, lines) = Directory::read_all(&*store)?;
        Ok(Directory {
            store,
            numbers: Arc::new(RwLock::new(numbers)),
            advertiser_lines: Arc::new(RwLock::new(lines)),
        })
    }

    fn read_all(store: &dyn Store) -> Result<Maps, StoreError> {
        let numbers = store
            .all_numbers()?
            .into_iter()
            .map(|n| (n.number.clone(), Arc::new(n)))
            .collect();
        let lines = store
            .advertisers_with_lines()?
            .into_iter()
            .filter_map(|a| Some((a.id, a.lines?)))
            .collect();
        Ok((numbers, lines))
    }

    /// Reads everything again (a node that fell too far behind the change feed).
    pub fn reload(&self) -> Result<(), StoreError> {
        let (numbers, lines) = Directory::read_all(&*self.store)?;
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
