//! The server's settings: flags, environment, an optional TOML file, and
//! defaults, in that order of precedence.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::backend::DEFAULT_STORE;

/// The default address: loopback only, so that a server started without
/// tokens is reachable from this machine alone.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7171";

/// The default request body limit: 1 MiB.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

/// The default PostgreSQL schema.
pub const DEFAULT_SCHEMA: &str = "herald";

/// `herald serve`'s flags. Each flag can also be set by its environment
/// variable or in the config file (`--config`, keys as the flags with `_`
/// for `-`).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:7171]
    #[arg(long, env = "HERALD_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Event store: sqlite://PATH or postgres://USER@HOST/DB [default: sqlite://herald.db]
    #[arg(long, env = "HERALD_STORE", value_name = "URL")]
    pub store: Option<String>,
    /// PostgreSQL schema for the store's tables [default: herald]
    #[arg(long, env = "HERALD_SCHEMA", value_name = "NAME")]
    pub schema: Option<String>,
    /// File with one bearer token per line (blank lines and lines starting with # are skipped)
    #[arg(long, env = "HERALD_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// Largest request body in bytes [default: 1048576]
    #[arg(long, env = "HERALD_BODY_LIMIT", value_name = "BYTES")]
    pub body_limit: Option<usize>,
    /// TOML file with any of the settings above
    #[arg(long, env = "HERALD_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
}

/// The settings file's shape: every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    store: Option<String>,
    schema: Option<String>,
    token_file: Option<PathBuf>,
    tokens: Option<Vec<String>>,
    body_limit: Option<usize>,
}

/// The resolved settings of a server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServeConfig {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The store URL.
    pub store: String,
    /// The PostgreSQL schema.
    pub schema: String,
    /// The accepted bearer tokens; none means no authentication (allowed
    /// on loopback only).
    pub tokens: Vec<String>,
    /// The largest request body, in bytes.
    pub body_limit: usize,
}

/// Why the settings are not usable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config or token file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid TOML of the expected shape.
    #[error("invalid config file {path}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A non-loopback address with no token: anyone on the network could
    /// write events.
    #[error(
        "refusing to listen on {0}, which is not a loopback address, with no token: set HERALD_TOKENS or --token-file"
    )]
    OpenWithoutTokens(SocketAddr),
    /// A body limit of 0 would refuse every request.
    #[error("the body limit must be at least 1 byte")]
    ZeroBodyLimit,
}

impl ServeConfig {
    /// Resolves the flags (already merged with the environment by clap),
    /// the config file they name, `HERALD_TOKENS` (comma-separated, passed
    /// in as `env_tokens`) and the defaults.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when a file cannot be read or parsed, or the result is
    /// unsafe (an open address without tokens).
    pub fn resolve(args: &ServeArgs, env_tokens: Option<&str>) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => read_config(path)?,
            None => FileConfig::default(),
        };
        let mut tokens: Vec<String> = Vec::new();
        if let Some(list) = env_tokens {
            tokens.extend(split_tokens(list.split(',')));
        }
        if let Some(path) = args.token_file.as_ref().or(file.token_file.as_ref()) {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            tokens.extend(split_tokens(
                text.lines().filter(|l| !l.trim_start().starts_with('#')),
            ));
        }
        tokens.extend(split_tokens(
            file.tokens.iter().flatten().map(String::as_str),
        ));
        let config = Self {
            listen: args
                .listen
                .or(file.listen)
                .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("a valid default address")),
            store: args
                .store
                .clone()
                .or(file.store)
                .unwrap_or_else(|| DEFAULT_STORE.to_owned()),
            schema: args
                .schema
                .clone()
                .or(file.schema)
                .unwrap_or_else(|| DEFAULT_SCHEMA.to_owned()),
            tokens,
            body_limit: args
                .body_limit
                .or(file.body_limit)
                .unwrap_or(DEFAULT_BODY_LIMIT),
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks the settings are safe to serve with.
    ///
    /// # Errors
    ///
    /// [`ConfigError::OpenWithoutTokens`] or [`ConfigError::ZeroBodyLimit`].
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.tokens.is_empty() && !self.listen.ip().is_loopback() {
            return Err(ConfigError::OpenWithoutTokens(self.listen));
        }
        if self.body_limit == 0 {
            return Err(ConfigError::ZeroBodyLimit);
        }
        Ok(())
    }
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.parse().expect("a valid default address"),
            store: DEFAULT_STORE.to_owned(),
            schema: DEFAULT_SCHEMA.to_owned(),
            tokens: Vec::new(),
            body_limit: DEFAULT_BODY_LIMIT,
        }
    }
}

fn split_tokens<'a>(items: impl Iterator<Item = &'a str>) -> impl Iterator<Item = String> {
    items
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
}

fn read_config(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_listen_on_loopback_with_sqlite() {
        let config = ServeConfig::resolve(&ServeArgs::default(), None).unwrap();
        assert_eq!(config, ServeConfig::default());
        assert_eq!(config.listen.to_string(), "127.0.0.1:7171");
        assert_eq!(config.store, "sqlite://herald.db");
    }

    #[test]
    fn refuses_an_open_address_without_tokens_but_not_with_one() {
        let args = ServeArgs {
            listen: Some("0.0.0.0:7171".parse().unwrap()),
            ..ServeArgs::default()
        };
        assert!(matches!(
            ServeConfig::resolve(&args, None),
            Err(ConfigError::OpenWithoutTokens(_))
        ));
        let config = ServeConfig::resolve(&args, Some("s3cret, other ,")).unwrap();
        assert_eq!(config.tokens, ["s3cret", "other"]);
    }

    #[test]
    fn flags_win_over_the_file_which_wins_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("tokens");
        std::fs::write(&tokens, "# ops\nfrom-file\n\n").unwrap();
        let file = dir.path().join("herald.toml");
        std::fs::write(
            &file,
            format!(
                "listen = \"127.0.0.1:9000\"\nstore = \"sqlite://other.db\"\nbody_limit = 10\ntoken_file = {:?}\n",
                tokens.display().to_string()
            ),
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(file),
            store: Some("sqlite://flag.db".to_owned()),
            ..ServeArgs::default()
        };
        let config = ServeConfig::resolve(&args, None).unwrap();
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.store, "sqlite://flag.db");
        assert_eq!(config.body_limit, 10);
        assert_eq!(config.tokens, ["from-file"]);
    }

    #[test]
    fn a_bad_config_file_says_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("herald.toml");
        std::fs::write(&file, "lisen = \"127.0.0.1:1\"\n").unwrap();
        let args = ServeArgs {
            config: Some(file),
            ..ServeArgs::default()
        };
        let err = ServeConfig::resolve(&args, None).unwrap_err();
        assert!(err.to_string().contains("lisen"), "{err}");
    }
}
