//! The reference README's `client.py`, in Rust: sends a message (and a file, if given), prints
//! every frame the server sends back, and exits once the server has been quiet for a second.
//!
//! ```text
//! cargo run --example server                       # or the Python reference's server.py
//! cargo run --example client -- [--connect 127.0.0.1:8000] [--file PATH] [--message TEXT]
//! ```

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use tej_hub::{Client, Frame, Handler, Sender, Status};
use tokio::sync::mpsc;

/// A TEJ client that sends one frame and prints the answers.
#[derive(Parser)]
struct Args {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:8000")]
    connect: SocketAddr,
    /// A file to send along with the message.
    #[arg(long)]
    file: Option<PathBuf>,
    /// The message to send.
    #[arg(long, default_value = "Sending from client")]
    message: String,
    /// Custom status code of the frame sent (0..=127).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=127))]
    status: u8,
}

/// How long the server may stay quiet before the client leaves.
const QUIET: Duration = Duration::from_secs(1);
/// The longest the client stays, whatever the server does.
const AT_MOST: Duration = Duration::from_secs(5);

/// Forwards every frame to `main`, which prints it.
struct Forward(mpsc::UnboundedSender<Frame>);

impl Handler for Forward {
    async fn received(&mut self, frame: Frame, _sender: &Sender) {
        let _ = self.0.send(frame);
    }
}

/// Prints one frame as plain text and flushes, so a pipe sees it at once.
fn print_frame(frame: &Frame) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{frame}\n");
    let _ = out.flush();
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let status = Status::try_from(args.status)?;
    let mut frame = Frame::builder(status).message(args.message);
    if let Some(path) = &args.file {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        frame = frame.file(name, tokio::fs::read(path).await?);
    }

    let (frames, mut received) = mpsc::unbounded_channel();
    let connection = Client::connect(args.connect).await?.spawn(Forward(frames));
    connection.sender().send(frame.build()).await?;

    let deadline = tokio::time::Instant::now() + AT_MOST;
    while let Ok(Some(frame)) = tokio::time::timeout_at(
        deadline.min(tokio::time::Instant::now() + QUIET),
        received.recv(),
    )
    .await
    {
        print_frame(&frame);
    }
    connection.sender().close().await;
    connection.join().await;
    Ok(())
}
