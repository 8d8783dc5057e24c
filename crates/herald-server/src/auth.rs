//! Bearer tokens.

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::app::AppState;
use crate::problem::Problem;

/// The accepted tokens, kept as SHA-256 digests: comparing digests of
/// equal length in constant time tells an attacker nothing about a token's
/// length or its first differing byte.
#[derive(Clone, Debug, Default)]
pub struct Tokens {
    digests: Vec<[u8; 32]>,
}

impl Tokens {
    /// Accepts these tokens; none means no authentication.
    pub fn new<I, S>(tokens: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self {
            digests: tokens
                .into_iter()
                .map(|t| Sha256::digest(t.as_ref().as_bytes()).into())
                .collect(),
        }
    }

    /// Whether requests need a token.
    pub fn required(&self) -> bool {
        !self.digests.is_empty()
    }

    /// Whether `presented` is one of the tokens. Every token is compared,
    /// whichever matches, so the time taken does not say which.
    pub fn accepts(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        self.digests
            .iter()
            .fold(subtle::Choice::from(0), |found, d| found | d.ct_eq(&digest))
            .into()
    }
}

/// The token of a request: the `Authorization: Bearer` header, or the
/// `access_token` query parameter for clients that cannot set headers
/// (a browser's `EventSource`).
fn presented(request: &Request) -> Option<&str> {
    if let Some(value) = request.headers().get(header::AUTHORIZATION) {
        return value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
    }
    request.uri().query().and_then(|query| {
        query
            .split('&')
            .find_map(|pair| pair.strip_prefix("access_token="))
    })
}

/// Refuses requests without an accepted token when tokens are configured.
pub async fn require_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if !state.tokens.required() {
        return next.run(request).await;
    }
    match presented(&request) {
        Some(token) if state.tokens.accepts(token) => next.run(request).await,
        Some(_) => Problem::unauthorized("the bearer token is not valid").into_response(),
        None => Problem::unauthorized(
            "this server requires a bearer token: send Authorization: Bearer <token>",
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_configured_tokens() {
        let tokens = Tokens::new(["alpha", "beta"]);
        assert!(tokens.required());
        assert!(tokens.accepts("alpha"));
        assert!(tokens.accepts("beta"));
        assert!(!tokens.accepts("alph"));
        assert!(!tokens.accepts("alphaa"));
        assert!(!tokens.accepts(""));
        assert!(!Tokens::default().required());
    }
}
