//! `GET /api/openapi.json`: the OpenAPI 3 document of the API, written by
//! hand in `openapi.json` beside this file and compiled into the binary.

use axum::http::header;
use axum::response::IntoResponse;

/// The document.
pub(crate) const DOCUMENT: &str = include_str!("openapi.json");

/// `GET /api/openapi.json`.
pub(crate) async fn document() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT)
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    #[test]
    fn the_document_is_openapi_3_and_lists_every_endpoint_of_the_router() {
        let doc: Value = serde_json::from_str(super::DOCUMENT).expect("valid JSON");
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        let paths = doc["paths"].as_object().expect("paths");
        for path in super::super::endpoint_paths() {
            let full = format!("/api{path}");
            assert!(paths.contains_key(&full), "{full} is not in the document");
        }
    }
}
