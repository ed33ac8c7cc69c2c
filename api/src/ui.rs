//! The web screens (SPEC 5.5), served by every node's API: the incoming-call screen
//! (着信通知画面, `/ui/live`: calls as they ring and are answered, from the live call
//! stream) and the call log screen (`/ui/calls`: search, sort, CSV download, a call's
//! recording played in the page). Static pages with no data of their own: the script
//! calls the API with an operator's key or an advertiser's (that advertiser's calls
//! alone), which the user types in (or opens with a `#key=` fragment), kept in the
//! tab's session storage. A strict content security policy allows only this node's
//! own scripts, styles and API.
//!
//! Each screen is its `<main>` (`ui/<screen>.html`) in the page every screen shares
//! (`ui/shell.html`: the header, the navigation between the screens, the key form),
//! put together once, at the first request.

use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use std::sync::OnceLock;

/// A screen: its name (its path under `/ui/` and its `data-screen`), its title, its
/// heading and its `<main>`.
struct Screen {
    name: &'static str,
    title: &'static str,
    heading: &'static str,
    main: &'static str,
}

const SCREENS: [Screen; 2] = [
    Screen {
        name: "live",
        title: "着信通知 — incoming calls",
        heading: "着信通知 <small>incoming calls</small>",
        main: include_str!("ui/live.html"),
    },
    Screen {
        name: "calls",
        title: "通話ログ — call log",
        heading: "通話ログ <small>call log</small>",
        main: include_str!("ui/calls.html"),
    },
];

/// The navigation's link text of each screen, in [`SCREENS`]' order.
const NAV: [&str; 2] = ["Incoming calls", "Call log"];

const SHELL: &str = include_str!("ui/shell.html");
const SCRIPT: &str = include_str!("ui/screens.js");
const STYLE: &str = include_str!("ui/screens.css");

/// Only this origin's script, style and API; no frames, no plug-ins, no inline code;
/// media only from `blob:` URLs (a recording the script fetched with the key).
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self'; media-src blob:; form-action 'self'; \
    base-uri 'none'; frame-ancestors 'none'";

/// Screen `i`'s page: its main in the shell, its own link marked current.
fn html(i: usize) -> &'static str {
    static PAGES: OnceLock<Vec<String>> = OnceLock::new();
    let pages = PAGES.get_or_init(|| {
        SCREENS
            .iter()
            .map(|s| {
                let nav: Vec<String> = SCREENS
                    .iter()
                    .zip(NAV)
                    .map(|(other, text)| {
                        let current = if other.name == s.name {
                            r#" aria-current="page""#
                        } else {
                            ""
                        };
                        format!(r#"<a href="/ui/{}"{current}>{text}</a>"#, other.name)
                    })
                    .collect();
                SHELL
                    .replace("{title}", s.title)
                    .replace("{screen}", s.name)
                    .replace("{heading}", s.heading)
                    .replace("{nav}", &nav.join(" · "))
                    .replace("{main}", s.main)
            })
            .collect()
    });
    &pages[i]
}

fn page(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let mut router = Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/live") }))
        .route("/ui/", get(|| async { Redirect::to("/ui/live") }))
        .route(
            "/ui/screens.js",
            get(|| async { page("application/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/ui/screens.css",
            get(|| async { page("text/css; charset=utf-8", STYLE) }),
        );
    for (i, s) in SCREENS.iter().enumerate() {
        let path = format!("/ui/{}", s.name);
        router = router.route(
            &path,
            get(move || async move { page("text/html; charset=utf-8", html(i)) }),
        );
    }
    router
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each page is whole: the shell's placeholders filled, its own main in it, and
    /// its own link (only) marked current.
    #[test]
    fn pages_are_put_together() {
        for (i, s) in SCREENS.iter().enumerate() {
            let page = html(i);
            for hole in ["{title}", "{screen}", "{heading}", "{nav}", "{main}"] {
                assert!(!page.contains(hole), "{hole} left in {}", s.name);
            }
            assert!(page.contains(&format!(r#"<body data-screen="{}">"#, s.name)));
            assert!(page.contains(s.main));
            let current = format!(r#"<a href="/ui/{}" aria-current="page">"#, s.name);
            assert!(page.contains(&current), "{page}");
            assert_eq!(page.matches("aria-current").count(), 1, "{page}");
        }
    }
}
