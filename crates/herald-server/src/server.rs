//! A running server.

use std::net::SocketAddr;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::app::{AppState, router};
use crate::backend::{Backend, OpenStoreError};
use crate::config::{ConfigError, ServeConfig};

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The settings are not usable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] OpenStoreError),
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A server running in the background of the current tokio runtime.
///
/// ```no_run
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use herald_server::{ServeConfig, Server};
///
/// let config = ServeConfig {
///     listen: "127.0.0.1:0".parse()?,
///     store: "sqlite://events.db".to_owned(),
///     ..ServeConfig::default()
/// };
/// let server = Server::start(config).await?;
/// println!("listening on http://{}", server.addr());
/// server.shutdown().await;
/// # Ok(()) }
/// ```
pub struct Server {
    addr: SocketAddr,
    state: AppState,
    stop: watch::Sender<bool>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Server {
    /// Opens the store, binds the address and starts serving.
    ///
    /// # Errors
    ///
    /// [`ServeError`]: unsafe settings, a store that cannot be opened, an
    /// address that cannot be bound.
    pub async fn start(config: ServeConfig) -> Result<Self, ServeError> {
        config.validate()?;
        let backend = Backend::open(&config.store, &config.schema).await?;
        Self::start_on(backend, config).await
    }

    /// Starts serving on a store already open.
    ///
    /// # Errors
    ///
    /// As [`start`](Self::start).
    pub async fn start_on(backend: Backend, config: ServeConfig) -> Result<Self, ServeError> {
        config.validate()?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| ServeError::Bind {
                addr: config.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| ServeError::Bind {
            addr: config.listen,
            source,
        })?;
        let state = AppState::new(backend, config);
        crate::startup(&state).await;
        let app = router(state.clone());
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await
        });
        tracing::info!(%addr, store = state.backend.kind(), "herald server listening");
        Ok(Self {
            addr,
            state,
            stop,
            task,
        })
    }

    /// The address it listens on (with the port chosen, when it was 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The shared state (the bus, the store).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Stops accepting requests, lets those in flight finish (live
    /// subscriptions end), then stops the bus's subscribers.
    pub async fn shutdown(self) {
        self.state.close();
        self.stop.send_replace(true);
        match self.task.await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::error!(error = %err, "herald server ended with an error"),
            Err(err) => tracing::error!(error = %err, "herald server task ended abnormally"),
        }
        self.state.bus.shutdown().await;
    }

    /// Serves until `signal` completes, then shuts down.
    pub async fn run_until(self, signal: impl std::future::Future<Output = ()>) {
        signal.await;
        tracing::info!("herald server shutting down");
        self.shutdown().await;
    }
}
