//! [`HubConfig`]: every setting of the hub, with its default, read from a TOML file whose keys
//! are the `serve` flags' names (`max-frame-bytes = 1048576`); flags override the file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::codec::Limits;
pub use crate::hub::control::LimitSettings;
use crate::hub::control::SlowPolicy;
use crate::hub::store::{Discard, StoreConfigError, SyncPolicy};

/// How the hub writes its logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// Every format.
    pub const ALL: [LogFormat; 2] = [LogFormat::Text, LogFormat::Json];

    /// The format's name in settings: `text` or `json`.
    pub const fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// Parses `text` or `json`.
///
/// # Errors
/// [`ConfigError::Invalid`] for anything else.
impl std::str::FromStr for LogFormat {
    type Err = ConfigError;

    fn from_str(name: &str) -> Result<LogFormat, ConfigError> {
        LogFormat::ALL
            .into_iter()
            .find(|format| format.as_str() == name)
            .ok_or(ConfigError::Invalid("log-format must be text or json"))
    }
}

/// The hub's settings. `Default` gives the documented defaults.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct HubConfig {
    /// Address to listen on. Default `127.0.0.1:8000`, the reference examples' port.
    pub listen: SocketAddr,
    /// Worker threads (actix arbiters) that sessions are spread over. Default: the number of
    /// cores.
    pub workers: usize,
    /// Largest frame accepted, header included. Default 16 GiB: frames larger than
    /// `cut_through_bytes` are relayed in chunks as they arrive, so the hub never holds one whole.
    pub max_frame_bytes: u64,
    /// Frames up to this size are relayed whole, once complete; larger ones are streamed
    /// (cut-through). Default 1 MiB.
    pub cut_through_bytes: u64,
    /// A subscriber's outbound queue high-water mark, in bytes: what its slow-consumer policy
    /// acts on. Default 16 MiB; the low-water mark (where blocked publishers resume) is half.
    pub max_pending_bytes: u64,
    /// The slow-consumer policy a session starts with (`SLOW` changes it). Default `block`.
    pub slow_consumer: SlowPolicy,
    /// Seconds a subscriber with queued bytes may go without writing any before it is
    /// disconnected as a slow consumer (policy `block`); 0 is off. Default 30.
    pub slow_consumer_timeout: u64,
    /// Slowest rate, in bytes per second over `min_rate_window`, at which a publisher may send the
    /// rest of a frame it has started; slower ones are closed like stalled ones. 0 (default) is
    /// off.
    pub min_rate_bytes: u64,
    /// Seconds over which `min_rate_bytes` is measured. Default 10.
    pub min_rate_window: u64,
    /// Seconds without any byte from a connection before it is closed; 0 (default) is off.
    pub idle_timeout: u64,
    /// Seconds a connection may stay silent in the middle of a frame before it is closed.
    /// Default 30; 0 is off.
    pub stall_timeout: u64,
    /// Log format.
    pub log_format: LogFormat,
    /// Seconds a connection has to authenticate (`AUTH`, or its TLS handshake) before it is
    /// closed. Default 2, as in NATS.
    pub auth_timeout: u64,
    /// Most connections open at once; 0 (default) is no limit.
    pub max_connections: u64,
    /// Most connections open at once from one IP address; 0 (default) is no limit.
    pub max_connections_per_ip: u64,
    /// Most bytes per second read from one connection; the hub reads no faster (TCP pushes
    /// back), nothing is lost. 0 (default) is off.
    pub max_ingress_bytes_per_sec: u64,
    /// The users who may connect (`[[users]]` tables); none (the default) makes the hub open:
    /// every connection may do everything.
    pub users: Vec<UserConfig>,
    /// What connections that have not authenticated may do when there are users (the
    /// `[anonymous]` table); absent, they must authenticate.
    pub anonymous: Option<PermissionsConfig>,
    /// The listener's certificate chain (PEM); with `tls_key`, the listener is TLS-only.
    pub tls_cert: Option<PathBuf>,
    /// The private key of `tls_cert` (PEM).
    pub tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM).
    pub tls_client_ca: Option<PathBuf>,
    /// A client certificate's subject CN is the user name (one of `users`; no `AUTH` needed).
    pub tls_map_user: bool,
    /// The log filter (`tracing` directives, e.g. `info` or `tej_hub=debug`); `None` (default)
    /// takes `RUST_LOG`, else `info` (`async_nats` from `warn`). Reloaded on SIGHUP.
    pub log_level: Option<String>,
    /// Address of the monitoring HTTP listener (`/healthz`, `/varz`, `/metrics`, the dashboard);
    /// `None` (default) is off.
    pub http: Option<SocketAddr>,
    /// Seconds over which a lame-duck drain (SIGUSR2) closes the connections. Default 30.
    pub drain_seconds: u64,
    /// NATS servers (`nats://HOST:PORT`) through which this hub joins a cluster of hubs
    /// (docs/cluster.md); empty (default) is a hub on its own.
    pub cluster: Vec<String>,
    /// This hub's name in the cluster; `None` (default) is `hostname:port`.
    pub hub_name: Option<String>,
    /// The first token(s) of every NATS subject the cluster uses, so several clusters can share
    /// one NATS. Default `tej`.
    pub cluster_prefix: String,
    /// Reach NATS over TLS only, trusting this CA (PEM); `None` (default) trusts the platform's
    /// roots for `tls://` servers and lets plain `nats://` ones be plain.
    pub cluster_tls_ca: Option<PathBuf>,
    /// The durable code lists (`[[durable]]` tables, `--durable`); none (default) stores nothing.
    pub durable: Vec<DurableConfig>,
    /// Where durable codes are stored. Default `./tej-hub-data`.
    pub store_dir: PathBuf,
    /// When a stored frame is acknowledged: `always` (default), `interval=<duration>` or `os`
    /// (docs/durability.md).
    pub store_sync: SyncPolicy,
}

/// One `[[durable]]` table: codes whose frames are stored, with their limits. Absent keys take
/// the defaults (no limit; `discard = "old"`; 64 MiB segments; `ack_wait = "30s"`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DurableConfig {
    /// The codes, in the `SUB` grammar (`"5,10-20"`).
    pub codes: String,
    /// Most bytes kept per code.
    pub max_bytes: Option<u64>,
    /// Oldest frame kept, a duration (`"7d"`, `"90m"`).
    pub max_age: Option<String>,
    /// Most frames kept per code.
    pub max_frames: Option<u64>,
    /// At `max_bytes` / `max_frames`: `"old"` deletes the oldest, `"new"` refuses the frame.
    pub discard: Option<Discard>,
    /// The newest frames kept per code whatever the other limits say.
    pub keep_last: Option<u64>,
    /// Largest frame stored on these codes.
    pub max_frame_bytes: Option<u64>,
    /// Segment target size in bytes.
    pub segment_bytes: Option<u64>,
    /// Time a durable subscriber has to acknowledge a frame, a duration.
    pub ack_wait: Option<String>,
    /// Deliveries of a frame before it is dead-lettered; absent is unlimited.
    pub max_deliver: Option<u64>,
    /// The code dead-lettered frames are published on.
    pub dead_letter: Option<u64>,
}

/// One `[[users]]` table.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// The name given to `AUTH` (or a client certificate's CN with `tls-map-user`).
    pub name: String,
    /// The argon2 PHC hash of the password (`tej-hub passwd` prints one), never the password.
    pub password: String,
    /// Codes the user may publish on, in the `SUB` grammar (`"5,10-20"`, `"*"`); absent is none.
    pub publish: Option<String>,
    /// Codes the user may subscribe to; absent is none.
    pub subscribe: Option<String>,
    /// Queue groups the user may join: names, or prefixes ending in `*` (`["workers",
    /// "scan-*"]`); absent is any group. Joining is subscribing too: `subscribe` applies.
    pub groups: Option<Vec<String>>,
}

/// The name and permissions only: a password hash is never shown.
impl std::fmt::Debug for UserConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserConfig")
            .field("name", &self.name)
            .field("publish", &self.publish)
            .field("subscribe", &self.subscribe)
            .field("groups", &self.groups)
            .finish_non_exhaustive()
    }
}

/// The `[anonymous]` table: what connections that have not authenticated may do.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PermissionsConfig {
    /// Codes they may publish on, in the `SUB` grammar; absent is none.
    pub publish: Option<String>,
    /// Codes they may subscribe to; absent is none.
    pub subscribe: Option<String>,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            max_frame_bytes: HubConfig::DEFAULT_MAX_FRAME_BYTES,
            cut_through_bytes: 1024 * 1024,
            max_pending_bytes: 16 * 1024 * 1024,
            slow_consumer: SlowPolicy::Block,
            slow_consumer_timeout: 30,
            min_rate_bytes: 0,
            min_rate_window: 10,
            idle_timeout: 0,
            stall_timeout: 30,
            log_format: LogFormat::Text,
            auth_timeout: 2,
            max_connections: 0,
            max_connections_per_ip: 0,
            max_ingress_bytes_per_sec: 0,
            users: Vec::new(),
            anonymous: None,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            tls_map_user: false,
            log_level: None,
            http: None,
            drain_seconds: 30,
            cluster: Vec::new(),
            hub_name: None,
            cluster_prefix: "tej".into(),
            cluster_tls_ca: None,
            durable: Vec::new(),
            store_dir: PathBuf::from(crate::hub::store::DEFAULT_DIR),
            store_sync: SyncPolicy::Always,
        }
    }
}

/// A configuration file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for these settings.
    #[error("invalid configuration in {path}: {source}")]
    Parse {
        /// The file.
        path: String,
        /// Why.
        source: toml::de::Error,
    },
    /// A setting is out of range.
    #[error("invalid setting: {0}")]
    Invalid(&'static str),
    /// A `[[users]]` table is unusable.
    #[error("user {name:?}: {problem}")]
    User {
        /// The user's name as written.
        name: String,
        /// What is wrong (never the password).
        problem: String,
    },
    /// The `[anonymous]` table is unusable.
    #[error("[anonymous]: {0}")]
    Anonymous(String),
    /// The cluster settings are unusable.
    #[error("cluster: {0}")]
    Cluster(String),
    /// The TLS settings are unusable.
    #[error("TLS: {0}")]
    Tls(#[from] crate::hub::tls::TlsError),
    /// The durable store's settings are unusable.
    #[error("store: {0}")]
    Store(#[from] StoreConfigError),
}

impl HubConfig {
    /// The default largest frame: 16 GiB.
    pub const DEFAULT_MAX_FRAME_BYTES: u64 = 16 * 1024 * 1024 * 1024;

    /// Reads a TOML file; keys it does not name keep their defaults.
    ///
    /// # Errors
    /// [`ConfigError::Read`] or [`ConfigError::Parse`] (unknown keys are an error).
    pub fn from_file(path: &Path) -> Result<HubConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        HubConfig::from_toml(&text).map_err(|source| ConfigError::Parse {
            path: path.display().to_string(),
            source,
        })
    }

    /// Parses TOML text; keys it does not name keep their defaults.
    ///
    /// # Errors
    /// The TOML error (unknown keys are an error).
    pub fn from_toml(text: &str) -> Result<HubConfig, toml::de::Error> {
        toml::from_str(text)
    }

    /// Checks the settings' values (those with no meaningful value at zero, the log filter).
    /// Users, TLS files and cluster settings are resolved once, when a hub starts or reloads.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.workers == 0 {
            return Err(ConfigError::Invalid("workers must be at least 1"));
        }
        // The smallest frame (no files, no message) is 18 bytes.
        if self.max_frame_bytes < 18 {
            return Err(ConfigError::Invalid("max-frame-bytes must be at least 18"));
        }
        if self.cut_through_bytes < 18 {
            return Err(ConfigError::Invalid(
                "cut-through-bytes must be at least 18",
            ));
        }
        if self.max_pending_bytes == 0 {
            return Err(ConfigError::Invalid("max-pending-bytes must be at least 1"));
        }
        if let Some(level) = &self.log_level {
            if tracing_subscriber::EnvFilter::builder()
                .parse(level)
                .is_err()
            {
                return Err(ConfigError::Invalid(
                    "log-level is not a valid tracing filter",
                ));
            }
        }
        if self.min_rate_bytes > 0 && self.min_rate_window == 0 {
            return Err(ConfigError::Invalid(
                "min-rate-window must be at least 1 when min-rate-bytes is on",
            ));
        }
        if self.auth_timeout == 0 {
            return Err(ConfigError::Invalid("auth-timeout must be at least 1"));
        }
        crate::hub::store::StoreSettings::from_config(self)?;
        Ok(())
    }

    /// The settings `INFO` and `/varz` show as `limits`.
    pub fn limit_settings(&self) -> LimitSettings {
        LimitSettings {
            max_frame_bytes: self.max_frame_bytes,
            cut_through_bytes: self.cut_through_bytes,
            max_pending_bytes: self.max_pending_bytes,
            slow_consumer_timeout: self.slow_consumer_timeout,
            idle_timeout: self.idle_timeout,
            stall_timeout: self.stall_timeout,
            min_rate_bytes: self.min_rate_bytes,
            min_rate_window: self.min_rate_window,
            auth_timeout: self.auth_timeout,
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            max_ingress_bytes_per_sec: self.max_ingress_bytes_per_sec,
        }
    }

    /// The names of the settings in which `other` differs from `self` and that only a restart
    /// can change (the listening sockets, the threads, the log format, the cluster link).
    pub fn restart_only_changes(&self, other: &HubConfig) -> Vec<&'static str> {
        let mut changed = Vec::new();
        if self.listen != other.listen {
            changed.push("listen");
        }
        if self.workers != other.workers {
            changed.push("workers");
        }
        if self.http != other.http {
            changed.push("http");
        }
        if self.log_format != other.log_format {
            changed.push("log-format");
        }
        if self.cluster != other.cluster
            || self.hub_name != other.hub_name
            || self.cluster_prefix != other.cluster_prefix
            || self.cluster_tls_ca != other.cluster_tls_ca
        {
            changed.push("cluster");
        }
        if self.durable != other.durable
            || self.store_dir != other.store_dir
            || self.store_sync != other.store_sync
        {
            changed.push("store");
        }
        changed
    }

    /// `other` with the settings only a restart can change taken from `self`: what a reload
    /// applies.
    pub fn reloaded(&self, other: &HubConfig) -> HubConfig {
        HubConfig {
            listen: self.listen,
            workers: self.workers,
            http: self.http,
            log_format: self.log_format,
            cluster: self.cluster.clone(),
            hub_name: self.hub_name.clone(),
            cluster_prefix: self.cluster_prefix.clone(),
            cluster_tls_ca: self.cluster_tls_ca.clone(),
            durable: self.durable.clone(),
            store_dir: self.store_dir.clone(),
            store_sync: self.store_sync,
            ..other.clone()
        }
    }

    /// The drain period.
    pub fn drain_period(&self) -> Duration {
        Duration::from_secs(self.drain_seconds)
    }

    /// The codec limits of a hub connection: only the whole frame is bounded.
    pub fn limits(&self) -> Limits {
        Limits::frame_only(self.max_frame_bytes)
    }

    /// The idle timeout, `None` when off.
    pub fn idle_timeout(&self) -> Option<Duration> {
        (self.idle_timeout > 0).then(|| Duration::from_secs(self.idle_timeout))
    }

    /// The slow-consumer timeout, `None` when off.
    pub fn slow_consumer_timeout(&self) -> Option<Duration> {
        (self.slow_consumer_timeout > 0).then(|| Duration::from_secs(self.slow_consumer_timeout))
    }

    /// The minimum publishing rate mid-frame and its window, `None` when off.
    pub fn min_rate(&self) -> Option<(u64, Duration)> {
        (self.min_rate_bytes > 0 && self.min_rate_window > 0).then(|| {
            (
                self.min_rate_bytes,
                Duration::from_secs(self.min_rate_window),
            )
        })
    }

    /// The time a connection has to authenticate.
    pub fn auth_timeout(&self) -> Duration {
        Duration::from_secs(self.auth_timeout)
    }

    /// The stall timeout, `None` when off.
    pub fn stall_timeout(&self) -> Option<Duration> {
        (self.stall_timeout > 0).then(|| Duration::from_secs(self.stall_timeout))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_keys_are_the_flag_names() {
        let config = HubConfig::from_toml(
            "listen = \"127.0.0.1:9000\"\nmax-frame-bytes = 1024\nslow-consumer = \"drop\"\nidle-timeout = 5\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.listen, SocketAddr::from(([127, 0, 0, 1], 9000)));
        assert_eq!(config.max_frame_bytes, 1024);
        assert_eq!(config.idle_timeout(), Some(Duration::from_secs(5)));
        assert_eq!(config.stall_timeout, 30);
    }

    #[test]
    fn durable_tables_resolve_and_are_checked() {
        let config = HubConfig::from_toml(
            "store-sync = \"interval=2s\"\n[[durable]]\ncodes = \"5,10-12\"\nmax_bytes = 1000000\nmax_age = \"1h\"\ndiscard = \"new\"\nkeep_last = 1\nack_wait = \"5s\"\nmax_deliver = 3\ndead_letter = 99\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            config.store_sync,
            SyncPolicy::Interval(Duration::from_secs(2))
        );
        let settings = crate::hub::store::StoreSettings::from_config(&config)
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("durable codes"));
        assert_eq!(settings.codes().to_string(), "5,10-12");
        let limits = &settings.durable[0].limits;
        assert_eq!(limits.max_age, Some(Duration::from_secs(3600)));
        assert_eq!(limits.discard, Discard::New);
        assert_eq!(limits.max_deliver, Some(3));
        assert_eq!(limits.dead_letter.map(|s| s.code()), Some(99));
        for bad in [
            "[[durable]]\ncodes = \"2\"",
            "[[durable]]\ncodes = \"5\"\nmax_age = \"soon\"",
            "[[durable]]\ncodes = \"5\"\nsegment_bytes = 0",
            "[[durable]]\ncodes = \"5\"\ndead_letter = 127",
            "[[durable]]\ncodes = \"5-7\"\n[[durable]]\ncodes = \"7\"",
            "store-sync = \"sometimes\"",
        ] {
            let refused =
                HubConfig::from_toml(bad).map_or(true, |config| config.validate().is_err());
            assert!(refused, "{bad}");
        }
        assert!(HubConfig::default().validate().is_ok());
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(HubConfig::from_toml("max-frames = 3").is_err());
    }

    #[test]
    fn a_reload_keeps_what_needs_a_restart() {
        let old = HubConfig::default();
        let new = HubConfig::from_toml(
            "listen = \"127.0.0.1:9\"\nworkers = 7\nmax-pending-bytes = 1000\nhttp = \"127.0.0.1:0\"\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            old.restart_only_changes(&new),
            ["listen", "workers", "http"]
        );
        let applied = old.reloaded(&new);
        assert_eq!(applied.listen, old.listen);
        assert_eq!(applied.workers, old.workers);
        assert_eq!(applied.http, None);
        assert_eq!(applied.max_pending_bytes, 1000);
    }
}
