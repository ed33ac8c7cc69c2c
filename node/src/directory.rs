//! The number directory: every tracking number in memory, so an INVITE is routed
//! without a store round trip. Loaded at start; the API refreshes an entry whenever it
//! writes one (single node: the API and the call path share this process).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use tsunagu_store::{Store, StoreError, TrackingNumber};

#[derive(Clone)]
pub struct Directory {
    store: Arc<dyn Store>,
    numbers: Arc<RwLock<HashMap<String, Arc<TrackingNumber>>>>,
}

impl Directory {
    pub fn load(store: Arc<dyn Store>) -> Result<Directory, StoreError> {
        let numbers = store
            .all_numbers()?
            .into_iter()
            .map(|n| (n.number.clone(), Arc::new(n)))
            .collect();
        Ok(Directory {
            store,
            numbers: Arc::new(RwLock::new(numbers)),
        })
    }

    pub fn get(&self, number: &str) -> Option<Arc<TrackingNumber>> {
        self.numbers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(number)
            .cloned()
    }

    /// Re-reads one number from the store (after a create, update or delete).
    pub fn refresh(&self, number: &str) {
        match self.store.get_number(number) {
            Ok(found) => {
                let mut map = self.numbers.write().unwrap_or_else(|p| p.into_inner());
                match found {
                    Some(n) => map.insert(number.to_string(), Arc::new(n)),
                    None => map.remove(number),
                };
            }
            Err(e) => tracing::warn!(number, %e, "number directory refresh failed"),
        }
    }
}
