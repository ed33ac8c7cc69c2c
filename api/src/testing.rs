//! For the crate's tests: the real router on a real SQLite store in a temporary
//! directory, called in-process (no socket), with an operator and its key.

use crate::{ApiMetrics, ApiState, Channels, Defences, NodeHooks, PoolMetrics};
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Request, StatusCode};
use axum::Router;
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tsunagu_config::ApiConfig;
use tsunagu_store::{SqliteStore, Store};

/// The node's side of the API: counts the changes the API announces to the cluster
/// (each one a row of the store's change log and a reload on every node).
#[derive(Default)]
pub struct Announcements(AtomicUsize);

impl Announcements {
    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }

    fn note(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl NodeHooks for Announcements {
    fn number_changed(&self, _: &str) {
        self.note()
    }
    fn advertiser_changed(&self, _: &str, _: &str) {
        self.note()
    }
    fn webhooks_changed(&self, _: &str) {
        self.note()
    }
    fn prompt_changed(&self, _: &str, _: &str) {
        self.note()
    }
    fn not_ready(&self) -> Option<&'static str> {
        None
    }
}

pub const ADMIN: &str = "admin-token-for-tests";

pub struct Api {
    pub _dir: tempfile::TempDir,
    pub store: Arc<SqliteStore>,
    pub state: Arc<ApiState>,
    /// What this node announced to the cluster.
    pub announced: Arc<Announcements>,
    pub router: Router,
    pub operator: String,
    pub key: String,
    pub advertiser: String,
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    async fn read(r: axum::response::Response) -> Answer {
        let status = r.status();
        let headers = r.headers().clone();
        let body = axum::body::to_bytes(r.into_body(), usize::MAX)
            .await
            .unwrap_or_default();
        Answer {
            status,
            headers,
            body,
        }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.text()))
    }
}

/// A node's API on `config` (and `adjust` applied to its defences).
pub fn api_with(config: &ApiConfig, adjust: impl FnOnce(&mut Defences)) -> Api {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("t.db")).unwrap());
    let announced = Arc::new(Announcements::default());
    let state = state_on(&store, dir.path(), config, adjust, announced.clone());
    let op = store.create_operator("op").unwrap();
    let key = tsunagu_store::new_api_key();
    store
        .add_api_key(&op.id, &tsunagu_store::hash_api_key(&key), "tsk_x")
        .unwrap();
    let advertiser = store.create_advertiser(&op.id, "shop", None).unwrap().id;
    Api {
        router: crate::router(state.clone()),
        _dir: dir,
        store,
        state,
        announced,
        operator: op.id,
        key,
        advertiser,
    }
}

/// A node's state on `store`, its recordings and prompts under `dir`.
fn state_on(
    store: &Arc<SqliteStore>,
    dir: &std::path::Path,
    config: &ApiConfig,
    adjust: impl FnOnce(&mut Defences),
    hooks: Arc<Announcements>,
) -> Arc<ApiState> {
    let metrics = ApiMetrics::default();
    let pools = PoolMetrics::default();
    let mut registry = Registry::with_prefix("tsunagu");
    pools.register(&mut registry);
    metrics.register(&mut registry);
    let mut defences = Defences::new(config, metrics);
    adjust(&mut defences);
    Arc::new(ApiState {
        store: store.clone(),
        hooks,
        registry: Arc::new(registry),
        admin_token: ADMIN.into(),
        pool_metrics: pools,
        channels: Channels {
            email: false,
            sms: false,
            egress: Default::default(),
            egress_refused: Default::default(),
        },
        recordings_dir: dir.join("recordings"),
        node_id: "n1".into(),
        cluster_token: None,
        prompts: tsunagu_media::Prompts::load(&dir.join("prompts")).unwrap(),
        defences,
    })
}

pub fn api() -> Api {
    api_with(&ApiConfig::default(), |_| {})
}

impl Api {
    /// Another node on this one's store file (as the nodes of one machine share it),
    /// with its own connection, state and directory; the same operator and key.
    pub fn peer(&self) -> Api {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&self._dir.path().join("t.db")).unwrap());
        let announced = Arc::new(Announcements::default());
        let state = state_on(
            &store,
            dir.path(),
            &ApiConfig::default(),
            |_| {},
            announced.clone(),
        );
        Api {
            router: crate::router(state.clone()),
            _dir: dir,
            store,
            state,
            announced,
            operator: self.operator.clone(),
            key: self.key.clone(),
            advertiser: self.advertiser.clone(),
        }
    }

    /// Twenty rounds of two PATCHes of `path` at once, one through this node and one
    /// through a peer on the same store, each changing another field (`x(round)` and
    /// `y(round)`) after `reset`: both answered 200, and `kept(round, object)` checks
    /// that the object read afterwards has both changes (each PATCH was a
    /// read-modify-write, and one change was lost).
    pub async fn both_patches_kept(
        &self,
        path: &str,
        reset: &str,
        x: impl Fn(u32) -> String,
        y: impl Fn(u32) -> String,
        kept: impl Fn(u32, &serde_json::Value),
    ) {
        let peer = self.peer();
        let key = Some(self.key.as_str());
        for round in 0..20u32 {
            let r = self.send("PATCH", path, key, reset).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
            let (x, y) = (x(round), y(round));
            let (a, b) = tokio::join!(
                self.send("PATCH", path, key, &x),
                peer.send("PATCH", path, key, &y),
            );
            assert_eq!(
                (a.status, b.status),
                (StatusCode::OK, StatusCode::OK),
                "{} {}",
                a.text(),
                b.text()
            );
            kept(round, &self.send("GET", path, key, "").await.json());
        }
    }

    /// The response head; the body is left to the caller (it may be a stream).
    pub async fn call(
        &self,
        router: &Router,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> axum::response::Response {
        let kind = (!body.is_empty()).then_some("application/json");
        let body = Body::from(body.to_string());
        self.call_with(router, method, path, token, body, kind)
            .await
    }

    async fn call_with(
        &self,
        router: &Router,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Body,
        content_type: Option<&str>,
    ) -> axum::response::Response {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if let Some(kind) = content_type {
            req = req.header("content-type", kind);
        }
        let req = req.body(body).unwrap();
        let mut router = router.clone();
        tower_service::Service::call(&mut router, req)
            .await
            .unwrap()
    }

    pub async fn send(&self, method: &str, path: &str, token: Option<&str>, body: &str) -> Answer {
        let r = self.call(&self.router, method, path, token, body).await;
        Answer::read(r).await
    }

    /// `method path` with a binary body (e.g. a WAV), as the operator.
    pub async fn send_bytes(&self, method: &str, path: &str, body: Vec<u8>) -> Answer {
        let token = Some(self.key.as_str());
        let body = Body::from(body);
        let r = self
            .call_with(&self.router, method, path, token, body, Some("audio/wav"))
            .await;
        Answer::read(r).await
    }

    /// Rewrites the settings of the row of `table` whose `id_column` is `id` as a
    /// newer version would write them (a setting this one does not know): unreadable
    /// to this node's version, as during an upgrade.
    pub fn as_a_newer_version_wrote(&self, table: &str, id_column: &str, id: &str) {
        let c = rusqlite::Connection::open(self._dir.path().join("t.db")).unwrap();
        let sql = format!(
            "UPDATE {table} SET settings = '{{\"from_a_newer_version\":1,' || substr(settings, 2) WHERE {id_column} = ?1"
        );
        assert_eq!(c.execute(&sql, [id]).unwrap(), 1, "{table} {id}");
    }

    /// A web page's `POST path` (no key; `Origin: origin`), as the page tag sends it.
    pub async fn page_post(&self, origin: &str, path: &str) -> Answer {
        let req = Request::builder()
            .method("POST")
            .uri(path)
            .header("origin", origin)
            .header("content-type", "application/json")
            .body(Body::from("{}"))
            .unwrap();
        let mut router = self.router.clone();
        Answer::read(
            tower_service::Service::call(&mut router, req)
                .await
                .unwrap(),
        )
        .await
    }

    pub async fn get(&self, path: &str) -> Answer {
        let key = self.key.clone();
        self.send("GET", path, Some(&key), "").await
    }
}
