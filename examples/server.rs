//! The reference README's `server.py`, in Rust: greets every client with the message `Hello` and
//! prints every frame it receives (status, file names, message), one frame at a time.
//!
//! ```text
//! cargo run --example server -- [--listen 127.0.0.1:8000]
//! cargo run --example client            # in another shell, or the Python reference's client.py
//! ```

use std::io::Write;
use std::net::SocketAddr;

use clap::Parser;
use tej_hub::{Disconnect, Frame, Handler, Sender, Server, Status};

/// A TEJ server that greets and prints.
#[derive(Parser)]
struct Args {
    /// Address to listen on (the reference examples use port 8000).
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: SocketAddr,
}

/// Prints one frame as plain text and flushes, so a pipe sees it at once.
fn print_frame(frame: &Frame) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{frame}\n");
    let _ = out.flush();
}

struct Greeter {
    peer: SocketAddr,
}

impl Handler for Greeter {
    async fn connected(&mut self, sender: &Sender) {
        eprintln!("connected: {}", self.peer);
        let greeting = Frame::message(Status::default(), "Hello");
        if let Err(error) = sender.send(greeting).await {
            eprintln!("greeting {} failed: {error}", self.peer);
        }
    }

    async fn received(&mut self, frame: Frame, _sender: &Sender) {
        print_frame(&frame);
    }

    async fn disconnected(&mut self, reason: &Disconnect) {
        eprintln!("disconnected: {} ({reason})", self.peer);
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let server = Server::bind(args.listen).await?;
    eprintln!("listening on {}", server.local_addr()?);
    server.serve(|peer| Greeter { peer }).await;
    Ok(())
}
