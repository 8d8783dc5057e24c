//! The web UI: one page at `/`, its assets under `/ui/`, compiled into the
//! binary so that the UI works with no network beyond the server itself.
//!
//! # Security
//!
//! Every UI response carries a `Content-Security-Policy` that allows
//! scripts, styles and connections from this origin only and no inline
//! script at all: even if an event's payload made its way into the page as
//! markup, the browser would not run it. The scripts never put event data
//! into `innerHTML`; they build the page with `createElement` and
//! `textContent`, so payloads are shown as text.
//!
//! # Caching
//!
//! Each asset has a strong `ETag` (a digest of its bytes) and
//! `Cache-Control: no-cache`: browsers keep a copy but ask again each time,
//! and get a `304 Not Modified` until the binary is upgraded, so a new
//! version's scripts are never mixed with an old page.
//!
//! # Routing
//!
//! The page routes with the URL's fragment (`/#/events/<id>`), so the
//! server has one page to serve whatever view is open.

use std::sync::LazyLock;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

use crate::app::AppState;

/// The policy of every UI response: this origin's scripts, styles, images
/// and API; no inline script or style attribute, no plugin, no framing, no
/// form posting elsewhere.
pub(crate) const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

/// One embedded file.
struct Asset {
    /// Its name under `/ui/`.
    name: &'static str,
    /// Its media type.
    content_type: &'static str,
    /// Its bytes.
    body: &'static [u8],
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const SVG: &str = "image/svg+xml";

macro_rules! asset {
    ($name:literal, $type:expr) => {
        Asset {
            name: $name,
            content_type: $type,
            body: include_bytes!(concat!("../ui/", $name)),
        }
    };
}

/// Every file of the `ui/` folder (a test checks that none is missing).
const ASSETS: &[Asset] = &[
    asset!("index.html", HTML),
    asset!("style.css", CSS),
    asset!("favicon.svg", SVG),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("dom.js", JS),
    asset!("streams.js", JS),
    asset!("event.js", JS),
    asset!("log.js", JS),
    asset!("subscribers.js", JS),
    asset!("dead_letters.js", JS),
];

/// The strong entity tag of each asset, in the order of [`ASSETS`].
static ETAGS: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|asset| {
            let digest = Sha256::digest(asset.body);
            let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
            HeaderValue::from_str(&format!("\"{hex}\"")).expect("hex is a valid header value")
        })
        .collect()
});

/// The UI's routes: the page at `/` (and `/ui/`), the assets under `/ui/`.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/ui", get(index))
        .route("/ui/", get(index))
        .route("/ui/{name}", get(asset))
}

async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

async fn asset(Path(name): Path<String>, headers: HeaderMap) -> Response {
    serve(&name, &headers)
}

/// The asset called `name`, or a 404 that still carries the policy.
fn serve(name: &str, request: &HeaderMap) -> Response {
    let Some(index) = ASSETS.iter().position(|a| a.name == name) else {
        let mut response = (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("no UI asset is called {name:?}\n"),
        )
            .into_response();
        secure(response.headers_mut());
        return response;
    };
    let asset = &ASSETS[index];
    let etag = &ETAGS[index];
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| {
            tags.split(',')
                .any(|t| t.trim().trim_start_matches("W/") == etag.to_str().unwrap_or_default())
        });
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            )],
            asset.body,
        )
            .into_response()
    };
    let headers = response.headers_mut();
    headers.insert(header::ETAG, etag.clone());
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    secure(headers);
    response
}

/// The headers every UI response carries.
fn secure(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_of_the_ui_folder_is_embedded() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("ui");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .expect("the ui folder")
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        on_disk.sort();
        let mut embedded: Vec<String> = ASSETS.iter().map(|a| a.name.to_owned()).collect();
        embedded.sort();
        assert_eq!(on_disk, embedded, "ui/ and ASSETS differ");
    }

    /// Whether an HTML text has an attribute such as ` onclick=`.
    fn has_inline_handler(html: &str) -> bool {
        html.match_indices(" on").any(|(at, _)| {
            let rest = &html[at + 3..];
            let name: String = rest.chars().take_while(char::is_ascii_alphabetic).collect();
            !name.is_empty() && rest[name.len()..].starts_with('=')
        })
    }

    #[test]
    fn no_asset_uses_inner_html_or_inline_handlers() {
        for asset in ASSETS {
            let text = std::str::from_utf8(asset.body).unwrap();
            for banned in [
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
                "eval(",
                "new Function",
            ] {
                assert!(!text.contains(banned), "{} uses {banned}", asset.name);
            }
            if asset.content_type == HTML {
                assert!(
                    !text.contains("<script>"),
                    "{} has an inline script",
                    asset.name
                );
                assert!(
                    !has_inline_handler(text),
                    "{} has an inline event handler",
                    asset.name
                );
                assert!(
                    !text.contains("style="),
                    "{} has an inline style",
                    asset.name
                );
            }
        }
    }
}
