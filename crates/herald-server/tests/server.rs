//! The server starts on a store, answers `/health`, and refuses unsafe
//! settings.

use herald_server::{ConfigError, ServeConfig, ServeError, Server};

async fn start(dir: &tempfile::TempDir, tokens: &[&str]) -> Server {
    let config = ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        store: format!("sqlite://{}", dir.path().join("herald.db").display()),
        tokens: tokens.iter().map(|t| (*t).to_owned()).collect(),
        ..ServeConfig::default()
    };
    Server::start(config).await.expect("the server starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_with_the_store_kind() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir, &[]).await;
    let body: serde_json::Value = reqwest::get(format!("http://{}/health", server.addr()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["store"], "sqlite");
    assert!(dir.path().join("herald.db").exists());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_an_open_address_without_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServeConfig {
        listen: "0.0.0.0:0".parse().unwrap(),
        store: format!("sqlite://{}", dir.path().join("herald.db").display()),
        ..ServeConfig::default()
    };
    let err = Server::start(config).await.err().expect("refused");
    assert!(
        matches!(err, ServeError::Config(ConfigError::OpenWithoutTokens(_))),
        "{err}"
    );
    assert!(err.to_string().contains("HERALD_TOKENS"), "{err}");
    assert!(!dir.path().join("herald.db").exists(), "nothing is opened");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_store_url_is_a_clear_error() {
    let config = ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        store: "mysql://localhost/x".to_owned(),
        ..ServeConfig::default()
    };
    let err = Server::start(config).await.err().expect("refused");
    assert!(err.to_string().contains("sqlite://PATH"), "{err}");
}
