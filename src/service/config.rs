//! Settings of `paramopt serve`: command line, then environment, then a config
//! file, then defaults; the first that says something wins.
//!
//! The command line and the environment are read by clap in `main.rs` (each
//! flag has its `PARAMOPT_*` variable); this module merges them with the
//! `[serve]` table of the config file. Other tables in that file belong to
//! other parts of paramopt and are ignored here.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::ServiceOptions;

pub const DEFAULT_ADDR: &str = "127.0.0.1:8700";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Io {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Parse { file: PathBuf, message: String },
    #[error("{field} = {value:?}: {reason}")]
    Invalid { field: &'static str, value: String, reason: &'static str },
}

/// The `[serve]` table of the config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeFile {
    pub addr: Option<String>,
    /// Store URL: `data/`, `local:///path` or `firestore://PROJECT`.
    pub store: Option<String>,
    /// Where the outcome journal lives (always local).
    pub data_dir: Option<PathBuf>,
    pub token: Option<String>,
    /// A file whose first line is the token: keeps it out of `ps` and out of the config file.
    pub token_file: Option<PathBuf>,
    pub log_json: Option<bool>,
    pub request_timeout_secs: Option<f64>,
    pub header_read_timeout_secs: Option<f64>,
    pub max_connections: Option<usize>,
    pub body_limit_bytes: Option<usize>,
    pub workers: Option<usize>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct ConfigFile {
    #[serde(default)]
    serve: ServeFile,
}

impl ServeFile {
    /// The `[serve]` table of `path`.
    pub fn load(path: &Path) -> Result<ServeFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io { file: path.into(), source })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, origin: &Path) -> Result<ServeFile, ConfigError> {
        let file: ConfigFile = toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: origin.into(),
            message: e.to_string().lines().filter(|l| !l.trim().is_empty()).collect::<Vec<_>>().join(" "),
        })?;
        Ok(file.serve)
    }
}

/// What the command line and the environment said (via clap); `None` is silence.
#[derive(Debug, Clone, Default)]
pub struct ServeArgs {
    pub addr: Option<String>,
    pub store: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub log_json: bool,
    pub request_timeout_secs: Option<f64>,
    pub header_read_timeout_secs: Option<f64>,
    pub max_connections: Option<usize>,
    pub body_limit_bytes: Option<usize>,
    pub workers: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct ServeSettings {
    pub addr: SocketAddr,
    pub store: String,
    pub data_dir: PathBuf,
    pub log_json: bool,
    /// Tokio worker threads; `None` is one per core. The agent's learning
    /// thread comes on top, so fewer workers than cores can lower tail latency.
    pub workers: Option<usize>,
    pub options: ServiceOptions,
}

/// The embedded store under `data/`: no server, nothing to set up.
pub const DEFAULT_STORE: &str = "data/";
pub const DEFAULT_DATA_DIR: &str = "data";

/// A duration setting given in seconds: within (0, `max`], else an error
/// naming the field and the value (`range` says the bound); `default` when
/// not given.
fn seconds(
    field: &'static str,
    value: Option<f64>,
    (max, range): (f64, &'static str),
    default: Duration,
) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(default),
        Some(s) if s.is_finite() && s > 0.0 && s <= max => Ok(Duration::from_secs_f64(s)),
        Some(s) => Err(ConfigError::Invalid { field, value: s.to_string(), reason: range }),
    }
}

impl ServeSettings {
    pub fn resolve(args: ServeArgs, file: ServeFile) -> Result<ServeSettings, ConfigError> {
        let defaults = ServiceOptions::default();
        let addr_text = args.addr.or(file.addr).unwrap_or_else(|| DEFAULT_ADDR.to_string());
        let addr = addr_text.parse().map_err(|_| ConfigError::Invalid {
            field: "addr",
            value: addr_text.clone(),
            reason: "expected an IP address and port, such as 127.0.0.1:8700",
        })?;
        let token_file = args.token_file.or(file.token_file);
        let token = match (args.token.or(file.token), token_file) {
            (Some(_), Some(path)) => {
                return Err(ConfigError::Invalid {
                    field: "token_file",
                    value: path.display().to_string(),
                    reason: "is given as well as a token: give one of them",
                })
            }
            (Some(t), None) => Some(t),
            (None, Some(path)) => {
                let text =
                    std::fs::read_to_string(&path).map_err(|source| ConfigError::Io { file: path.clone(), source })?;
                Some(text.lines().next().unwrap_or("").trim().to_string())
            }
            (None, None) => None,
        };
        if token.as_deref().is_some_and(|t| t.trim().is_empty()) {
            // An empty PARAMOPT_TOKEN silently turning auth off would be a trap.
            return Err(ConfigError::Invalid {
                field: "token",
                value: String::new(),
                reason: "is empty; unset it to run without auth",
            });
        }
        let request_timeout = seconds(
            "request_timeout_secs",
            args.request_timeout_secs.or(file.request_timeout_secs),
            (3600.0, "must be in (0, 3600]"),
            defaults.request_timeout,
        )?;
        let header_read_timeout = seconds(
            "header_read_timeout_secs",
            args.header_read_timeout_secs.or(file.header_read_timeout_secs),
            (600.0, "must be in (0, 600]"),
            defaults.header_read_timeout,
        )?;
        let max_connections = match args.max_connections.or(file.max_connections) {
            None => defaults.max_connections,
            Some(n) if (1..=1_000_000).contains(&n) => n,
            Some(n) => {
                return Err(ConfigError::Invalid {
                    field: "max_connections",
                    value: n.to_string(),
                    reason: "must be within 1..1000000",
                })
            }
        };
        let body_limit = match args.body_limit_bytes.or(file.body_limit_bytes) {
            None => defaults.body_limit,
            Some(n) if (1024..=16 << 20).contains(&n) => n,
            Some(n) => {
                return Err(ConfigError::Invalid {
                    field: "body_limit_bytes",
                    value: n.to_string(),
                    reason: "must be within 1 KiB..16 MiB",
                })
            }
        };
        let workers = match args.workers.or(file.workers) {
            Some(n) if !(1..=256).contains(&n) => {
                return Err(ConfigError::Invalid {
                    field: "workers",
                    value: n.to_string(),
                    reason: "must be within 1..256",
                })
            }
            w => w,
        };
        Ok(ServeSettings {
            addr,
            store: args.store.or(file.store).unwrap_or_else(|| DEFAULT_STORE.to_string()),
            data_dir: args.data_dir.or(file.data_dir).unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            workers,
            log_json: args.log_json || file.log_json.unwrap_or(false),
            options: ServiceOptions { token, body_limit, request_timeout, header_read_timeout, max_connections },
        })
    }
}
