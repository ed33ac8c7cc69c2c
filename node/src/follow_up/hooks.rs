//! Every operator's webhooks in memory, so a call decides without a store read whether
//! anyone wants its events (and creates none when nobody does). Loaded at start; kept
//! current by the provisioning feed, like the number directory.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use tsunagu_store::{Store, StoreError, Webhook};

#[derive(Clone)]
pub struct WebhookCache {
    store: Arc<dyn Store>,
    by_operator: Arc<RwLock<HashMap<String, Arc<[Webhook]>>>>,
}

impl WebhookCache {
    pub fn load(store: Arc<dyn Store>) -> Result<WebhookCache, StoreError> {
        let map = WebhookCache::read_all(&*store)?;
        Ok(WebhookCache {
            store,
            by_operator: Arc::new(RwLock::new(map)),
        })
    }

    fn read_all(store: &dyn Store) -> Result<HashMap<String, Arc<[Webhook]>>, StoreError> {
        let mut by_operator: HashMap<String, Vec<Webhook>> = HashMap::new();
        for h in store.all_webhooks()? {
            by_operator
                .entry(h.operator_id.clone())
                .or_default()
                .push(h);
        }
        Ok(by_operator
            .into_iter()
            .map(|(op, hooks)| (op, Arc::from(hooks)))
            .collect())
    }

    /// Reads every operator's webhooks again.
    pub fn reload(&self) -> Result<(), StoreError> {
        let map = WebhookCache::read_all(&*self.store)?;
        *self.by_operator.write().unwrap_or_else(|p| p.into_inner()) = map;
        Ok(())
    }

    /// The operator's webhooks (empty if none).
    pub fn of(&self, operator: &str) -> Arc<[Webhook]> {
        self.by_operator
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(operator)
            .cloned()
            .unwrap_or_else(|| Arc::from(Vec::new()))
    }

    /// Whether any of the operator's webhooks takes `event`.
    pub fn wants(&self, operator: &str, event: &str) -> bool {
        let map = self.by_operator.read().unwrap_or_else(|p| p.into_inner());
        map.get(operator)
            .is_some_and(|hooks| hooks.iter().any(|h| super::plan::subscribed(h, event)))
    }

    /// Re-reads one operator's webhooks from the store (after the API changed them).
    pub fn refresh(&self, operator: &str) -> tsunagu_store::Result<()> {
        let hooks = self.store.list_webhooks(operator)?;
        let mut map = self.by_operator.write().unwrap_or_else(|p| p.into_inner());
        if hooks.is_empty() {
            map.remove(operator);
        } else {
            map.insert(operator.to_string(), Arc::from(hooks));
        }
        Ok(())
    }
}
