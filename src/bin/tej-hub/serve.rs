//! `tej-hub serve`: the hub's flags, logs and signals.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use tej_hub::hub::config::{HubConfig, LogFormat};
use tej_hub::hub::control::SlowPolicy;
use tracing_subscriber::EnvFilter;

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
    #[arg(long, value_enum)]
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
    #[arg(long, value_enum)]
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
            max_ingress_bytes_per_sec
        );
        for (flag, setting) in [
            (&self.tls_cert, &mut config.tls_cert),
            (&self.tls_key, &mut config.tls_key),
            (&self.tls_client_ca, &mut config.tls_client_ca),
        ] {
            if flag.is_some() {
                setting.clone_from(flag);
            }
        }
        config.tls_map_user |= self.tls_map_user;
        config.validate()?;
        Ok(config)
    }
}

fn init_logs(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
}

/// SIGINT and SIGTERM, listened for from the moment this is created: a signal that arrives
/// before [`ShutdownSignals::recv`] is polled is kept, not lost to the default action.
struct ShutdownSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    /// Installs the handlers; needs a tokio runtime.
    fn install() -> std::io::Result<ShutdownSignals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(ShutdownSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Completes on the first SIGINT or SIGTERM.
    async fn recv(mut self) {
        tokio::select! {
            _ = self.term.recv() => tracing::info!(signal = "SIGTERM", "shutting down"),
            _ = self.int.recv() => tracing::info!(signal = "SIGINT", "shutting down"),
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
    init_logs(config.log_format);
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
    let served = actix_rt::System::new().block_on(async move {
        // The handlers go in before the ready line: a supervisor that signals the moment it
        // reads the line gets the graceful shutdown, never the default action.
        let signals = ShutdownSignals::install()?;
        let addr = listener.local_addr()?;
        // Scripts and tests read the real port from this line (with --listen ...:0).
        println!("tej-hub listening on {addr}");
        tej_hub::hub::run(listener, config, signals.recv()).await
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tej-hub: {error}");
            ExitCode::FAILURE
        }
    }
}
