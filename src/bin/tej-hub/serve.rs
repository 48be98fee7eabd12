//! `tej-hub serve`: the hub's flags, logs and signals.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::Args;
use tej_hub::hub::config::{DurableConfig, HubConfig, LogFormat};
use tej_hub::hub::control::SlowPolicy;
use tej_hub::hub::store::SyncPolicy;
use tej_hub::hub::Operation;
use tokio::sync::mpsc::UnboundedSender;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

#[derive(Args)]
pub(crate) struct Serve {
    /// Address to listen on [default: 127.0.0.1:8000].
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// TOML file with the same keys as these flags (e.g. `max-frame-bytes = 1048576`).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Worker threads [default: number of cores].
    #[arg(long)]
    workers: Option<usize>,
    /// Largest frame accepted, header included [default: 17179869184 (16 GiB)].
    #[arg(long)]
    max_frame_bytes: Option<u64>,
    /// Frames up to this size are relayed whole; larger ones are streamed as they arrive
    /// [default: 1048576].
    #[arg(long)]
    cut_through_bytes: Option<u64>,
    /// A subscriber's queue high-water mark in bytes; its slow-consumer policy acts past it
    /// [default: 16777216].
    #[arg(long)]
    max_pending_bytes: Option<u64>,
    /// What happens to a subscriber that cannot keep up, until it says otherwise with `SLOW`
    /// [default: block].
    #[arg(long, value_parser = slow_policy())]
    slow_consumer: Option<SlowPolicy>,
    /// Disconnect a subscriber (policy block) that writes nothing for this many seconds while
    /// bytes wait for it; 0 is off [default: 30].
    #[arg(long)]
    slow_consumer_timeout: Option<u64>,
    /// Close a publisher sending the rest of a frame slower than this many bytes/s over
    /// --min-rate-window; 0 is off [default: 0].
    #[arg(long)]
    min_rate_bytes: Option<u64>,
    /// Seconds over which --min-rate-bytes is measured [default: 10].
    #[arg(long)]
    min_rate_window: Option<u64>,
    /// Close a connection silent for this many seconds; 0 is off [default: 0].
    #[arg(long)]
    idle_timeout: Option<u64>,
    /// Close a connection silent this long in the middle of a frame; 0 is off [default: 30].
    #[arg(long)]
    stall_timeout: Option<u64>,
    /// Log format [default: text].
    #[arg(long, value_parser = log_format())]
    log_format: Option<LogFormat>,
    /// Seconds a connection has to authenticate (when the config has users) [default: 2].
    #[arg(long)]
    auth_timeout: Option<u64>,
    /// Most connections open at once; 0 is no limit [default: 0].
    #[arg(long)]
    max_connections: Option<u64>,
    /// Most connections open at once from one IP address; 0 is no limit [default: 0].
    #[arg(long)]
    max_connections_per_ip: Option<u64>,
    /// Most bytes per second read from one connection (lossless: the hub reads no faster); 0 is
    /// off [default: 0].
    #[arg(long)]
    max_ingress_bytes_per_sec: Option<u64>,
    /// Serve TLS only, with this certificate chain (PEM); needs --tls-key.
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM).
    #[arg(long, value_name = "FILE")]
    tls_client_ca: Option<PathBuf>,
    /// A client certificate's subject CN is the user name (one of the config's users; no AUTH).
    #[arg(long)]
    tls_map_user: bool,
    /// Log filter, e.g. `info` or `tej_hub=debug` (reloaded on SIGHUP) [default: RUST_LOG, else
    /// info,async_nats=warn].
    #[arg(long)]
    log_level: Option<String>,
    /// Serve the monitoring endpoints and the dashboard on this address (docs/operations.md)
    /// [default: off].
    #[arg(long, value_name = "ADDR")]
    http: Option<std::net::SocketAddr>,
    /// Seconds over which a drain (SIGUSR2) closes the connections [default: 30].
    #[arg(long)]
    drain_seconds: Option<u64>,
    /// Join a cluster of hubs through these NATS servers (comma-separated
    /// `nats://HOST:PORT`; docs/cluster.md) [default: off].
    #[arg(long, value_name = "URLS", value_delimiter = ',')]
    cluster: Vec<String>,
    /// This hub's name in the cluster [default: hostname:port].
    #[arg(long)]
    hub_name: Option<String>,
    /// Prefix of the cluster's NATS subjects, so several clusters can share one NATS
    /// [default: tej].
    #[arg(long)]
    cluster_prefix: Option<String>,
    /// Reach the cluster's NATS servers over TLS only, trusting the CA certificates in FILE
    /// (PEM) [default: plain for nats:// URLs, the platform's roots for tls:// ones].
    #[arg(long, value_name = "FILE")]
    cluster_tls_ca: Option<PathBuf>,
    /// Store the frames of these codes on disk (the SUB code-list grammar, e.g. 5,10-20) with the
    /// default limits; `[[durable]]` tables in --config set limits (docs/durability.md)
    /// [default: none].
    #[arg(long, value_name = "CODES")]
    durable: Option<String>,
    /// Where durable codes are stored [default: ./tej-hub-data].
    #[arg(long, value_name = "DIR")]
    store_dir: Option<PathBuf>,
    /// When a stored frame is acknowledged: always (fdatasync, shared by every frame written
    /// meanwhile), interval=<duration> (synced on a timer) or os (written to the kernel)
    /// [default: always].
    #[arg(long, value_name = "POLICY")]
    store_sync: Option<SyncPolicy>,
}

impl Serve {
    /// The file's settings (or the defaults) with the flags applied on top.
    fn config(&self) -> Result<HubConfig, tej_hub::hub::config::ConfigError> {
        let mut config = match &self.config {
            Some(path) => HubConfig::from_file(path)?,
            None => HubConfig::default(),
        };
        macro_rules! apply {
            ($($field:ident),*) => {$(
                if let Some(value) = self.$field { config.$field = value; }
            )*};
        }
        apply!(
            listen,
            workers,
            max_frame_bytes,
            cut_through_bytes,
            max_pending_bytes,
            slow_consumer,
            slow_consumer_timeout,
            min_rate_bytes,
            min_rate_window,
            idle_timeout,
            stall_timeout,
            log_format,
            auth_timeout,
            max_connections,
            max_connections_per_ip,
            max_ingress_bytes_per_sec,
            drain_seconds,
            store_sync
        );
        if let Some(codes) = &self.durable {
            config.durable.push(DurableConfig {
                codes: codes.clone(),
                ..DurableConfig::default()
            });
        }
        if let Some(dir) = &self.store_dir {
            config.store_dir.clone_from(dir);
        }
        for (flag, setting) in [
            (&self.tls_cert, &mut config.tls_cert),
            (&self.tls_key, &mut config.tls_key),
            (&self.tls_client_ca, &mut config.tls_client_ca),
            (&self.cluster_tls_ca, &mut config.cluster_tls_ca),
        ] {
            if flag.is_some() {
                setting.clone_from(flag);
            }
        }
        config.tls_map_user |= self.tls_map_user;
        if self.log_level.is_some() {
            config.log_level.clone_from(&self.log_level);
        }
        if self.http.is_some() {
            config.http = self.http;
        }
        if !self.cluster.is_empty() {
            config.cluster.clone_from(&self.cluster);
        }
        if self.hub_name.is_some() {
            config.hub_name.clone_from(&self.hub_name);
        }
        if let Some(prefix) = &self.cluster_prefix {
            config.cluster_prefix.clone_from(prefix);
        }
        config.validate()?;
        Ok(config)
    }
}

/// Where a reload changes the log filter.
type LogFilter = reload::Handle<EnvFilter, Registry>;

/// Crates whose own log lines are about what a client sent: actix-http's HTTP/1 dispatcher
/// (malformed requests on the monitoring port, at `error`) and rustls (a bad handshake, at `warn`,
/// quoting the client's bytes; the hub logs one line per failed handshake itself). A client's
/// mistakes belong at `debug`: these are silenced unless the filter asks for `debug` or names the
/// crate.
const CLIENT_NOISE: [(&str, &str); 2] = [("actix_http", "actix_http::h1"), ("rustls", "rustls")];

/// The log filter `config` asks for: its `log-level`, else `RUST_LOG`, else `info` (the NATS
/// client's own lines from `warn`), without [`CLIENT_NOISE`].
fn log_filter(config: &HubConfig) -> EnvFilter {
    // The NATS client logs every event at info; the cluster's own lines say what matters.
    const DEFAULT: &str = "info,async_nats=warn";
    let text = config
        .log_level
        .clone()
        .or_else(|| std::env::var(EnvFilter::DEFAULT_ENV).ok())
        .filter(|text| EnvFilter::try_new(text).is_ok())
        .unwrap_or_else(|| DEFAULT.to_owned());
    let mut filter = EnvFilter::new(&text);
    let directives: Vec<&str> = text.split(',').map(str::trim).collect();
    // The level for every target without a directive of its own.
    let debugging = directives.iter().any(|directive| {
        directive
            .parse::<LevelFilter>()
            .is_ok_and(|level| level >= LevelFilter::DEBUG)
    });
    for (name, target) in CLIENT_NOISE {
        let named = directives
            .iter()
            .any(|directive| directive.starts_with(name));
        if !debugging && !named {
            if let Ok(off) = format!("{target}=off").parse() {
                filter = filter.add_directive(off);
            }
        }
    }
    filter
}

fn init_logs(config: &HubConfig) -> LogFilter {
    let (filter, handle) = reload::Layer::new(log_filter(config));
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let registry = tracing_subscriber::registry().with(filter);
    match config.log_format {
        LogFormat::Text => registry.with(logs).init(),
        LogFormat::Json => registry.with(logs.json()).init(),
    }
    handle
}

/// SIGINT, SIGTERM, SIGUSR2 and SIGHUP, listened for from the moment this is created: a signal
/// that arrives before [`Signals::forward`] is polled is kept, not lost to the default action.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    usr2: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers; needs a tokio runtime.
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            usr2: signal(SignalKind::user_defined2())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Turns signals into operations, for as long as the hub runs: SIGINT and SIGTERM shut
    /// down, SIGUSR2 drains, SIGHUP re-reads the configuration (the file, then the flags on top)
    /// and reloads it; an invalid file is logged and changes nothing.
    async fn forward(mut self, args: &Serve, logs: LogFilter, hub: UnboundedSender<Operation>) {
        loop {
            let operation = tokio::select! {
                _ = self.term.recv() => {
                    tracing::info!(signal = "SIGTERM", "shutting down");
                    Operation::Shutdown
                }
                _ = self.int.recv() => {
                    tracing::info!(signal = "SIGINT", "shutting down");
                    Operation::Shutdown
                }
                _ = self.usr2.recv() => {
                    tracing::info!(signal = "SIGUSR2", "lame-duck drain");
                    Operation::Drain
                }
                _ = self.hup.recv() => match args.config() {
                    Ok(config) => {
                        tracing::info!(signal = "SIGHUP", "reloading the configuration");
                        if let Err(error) = logs.reload(log_filter(&config)) {
                            tracing::warn!(%error, "cannot change the log filter");
                        }
                        Operation::Reload(Box::new(config))
                    }
                    Err(error) => {
                        tracing::warn!(signal = "SIGHUP", %error, "reload refused; the old settings stay");
                        continue;
                    }
                },
            };
            if hub.send(operation).is_err() {
                return;
            }
        }
    }
}

pub(crate) fn serve(args: &Serve) -> ExitCode {
    let config = match args.config() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("tej-hub: {error}");
            return ExitCode::from(2);
        }
    };
    let logs = init_logs(&config);
    // One descriptor per connection: the usual soft limit (often 1024) would cap the hub there.
    match tej_hub::hub::raise_open_files_limit() {
        Ok((soft, hard)) => tracing::info!(soft, hard, "open files limit"),
        Err(error) => tracing::warn!(%error, "cannot raise the open files limit"),
    }
    let listener = match std::net::TcpListener::bind(config.listen) {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("tej-hub: cannot listen on {}: {error}", config.listen);
            return ExitCode::FAILURE;
        }
    };
    let monitor = match config.http.map(std::net::TcpListener::bind).transpose() {
        Ok(monitor) => monitor,
        Err(error) => {
            eprintln!(
                "tej-hub: cannot listen for monitoring on {:?}: {error}",
                config.http
            );
            return ExitCode::FAILURE;
        }
    };
    let served = actix_rt::System::new().block_on(async move {
        // The handlers go in before the ready line: a supervisor that signals the moment it
        // reads the line gets the graceful shutdown, never the default action.
        let signals = Signals::install()?;
        let addr = listener.local_addr()?;
        let monitor_addr = monitor
            .as_ref()
            .map(|monitor| monitor.local_addr())
            .transpose()?;
        // Scripts and tests read the real port from this line (with --listen ...:0); in a
        // cluster it comes once the hub has joined.
        let announce = move || {
            println!("tej-hub listening on {addr}");
            if let Some(monitor) = monitor_addr {
                println!("tej-hub monitoring on http://{monitor}");
            }
        };
        let (operations, received) = tokio::sync::mpsc::unbounded_channel();
        let serving = tej_hub::hub::run_announced(listener, monitor, config, received, announce);
        tokio::select! {
            served = serving => served,
            () = signals.forward(args, logs, operations) => Ok(()),
        }
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tej-hub: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `--slow-consumer`'s values: the policies' names, parsed by the library's own `FromStr`.
fn slow_policy() -> impl TypedValueParser<Value = SlowPolicy> {
    PossibleValuesParser::new(SlowPolicy::ALL.map(SlowPolicy::as_str))
        .try_map(|name| name.parse::<SlowPolicy>())
}

/// `--log-format`'s values, parsed by the library's own `FromStr`.
fn log_format() -> impl TypedValueParser<Value = LogFormat> {
    PossibleValuesParser::new(LogFormat::ALL.map(LogFormat::as_str))
        .try_map(|name| name.parse::<LogFormat>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(level: &str) -> String {
        log_filter(&HubConfig {
            log_level: Some(level.into()),
            ..HubConfig::default()
        })
        .to_string()
    }

    #[test]
    fn client_noise_is_off_below_debug_unless_named() {
        let quiet = filter("info");
        assert!(quiet.contains("actix_http::h1=off"), "{quiet}");
        assert!(quiet.contains("rustls=off"), "{quiet}");
        // Named by the user: theirs stands.
        let named = filter("info,actix_http=debug");
        assert!(!named.contains("actix_http::h1=off"), "{named}");
        assert!(named.contains("rustls=off"), "{named}");
        // Debugging: a client's mistakes are wanted.
        let debugging = filter("debug");
        assert!(!debugging.contains("=off"), "{debugging}");
        assert!(filter("warn,tej_hub=trace").contains("rustls=off"));
    }
}
