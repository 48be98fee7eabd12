//! What a client can put in the hub's log, read from a real `tej-hub serve` process's stderr
//! (`RUST_LOG=info`): malformed HTTP on the monitoring port writes nothing (a client's problem, at
//! `debug`), and each failed TLS handshake is one line of the hub's own, with the client's bytes
//! escaped — none of actix-http's or rustls's own.

#[path = "common/hub.rs"]
mod hub_common;
#[path = "common/pki.rs"]
mod pki;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use hub_common::{BinHub, PATIENCE};
use pki::Pki;

/// Writes `bytes` on a fresh connection to `addr` and reads until the peer closes (or 5 s):
/// what a careless or hostile client does. Write errors are expected (the server may close
/// first) and ignored.
fn hit(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect_timeout(&addr, PATIENCE).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    let _ = stream.write_all(bytes);
    let _ = stream.shutdown(Shutdown::Write);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    answer
}

/// A TLS 1.3 ClientHello whose server name is `sni`, taken as given.
fn client_hello(sni: &[u8]) -> Vec<u8> {
    fn u16_be(n: usize) -> [u8; 2] {
        u16::try_from(n).expect("fits in u16").to_be_bytes()
    }
    fn extension(kind: u16, body: &[u8]) -> Vec<u8> {
        let mut ext = kind.to_be_bytes().to_vec();
        ext.extend_from_slice(&u16_be(body.len()));
        ext.extend_from_slice(body);
        ext
    }
    let mut name = vec![0u8];
    name.extend_from_slice(&u16_be(sni.len()));
    name.extend_from_slice(sni);
    let mut server_name = u16_be(name.len()).to_vec();
    server_name.extend_from_slice(&name);
    let mut key_share = vec![0x00, 0x24, 0x00, 0x1d, 0x00, 0x20];
    key_share.extend_from_slice(&[9u8; 32]);
    let mut extensions = extension(0x0000, &server_name);
    extensions.extend(extension(0x002b, &[0x02, 0x03, 0x04]));
    extensions.extend(extension(0x000a, &[0x00, 0x02, 0x00, 0x1d]));
    extensions.extend(extension(0x000d, &[0x00, 0x02, 0x08, 0x04]));
    extensions.extend(extension(0x0033, &key_share));
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[7u8; 32]);
    body.extend_from_slice(&[0x00, 0x00, 0x02, 0x13, 0x01, 0x01, 0x00]);
    body.extend_from_slice(&u16_be(extensions.len()));
    body.extend_from_slice(&extensions);
    let mut handshake = vec![0x01];
    handshake.extend_from_slice(&u32::try_from(body.len()).expect("small").to_be_bytes()[1..]);
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&u16_be(handshake.len()));
    record.extend_from_slice(&handshake);
    record
}

/// Log lines written by `target` (a crate's module path, as the text format prints it).
fn lines_from<'a>(logs: &'a [String], target: &str) -> Vec<&'a String> {
    logs.iter()
        .filter(|line| line.contains(&format!(" {target}")))
        .collect()
}

#[test]
fn client_mistakes_never_reach_the_log_as_errors_and_a_failed_handshake_is_one_escaped_line() {
    let pki = Pki::new("logs");
    let (cert, key) = (pki.path("server.pem"), pki.path("server.key"));
    let hub = BinHub::start(&[
        "--http",
        "127.0.0.1:0",
        "--tls-cert",
        cert.to_str().expect("a UTF-8 path"),
        "--tls-key",
        key.to_str().expect("a UTF-8 path"),
    ]);
    let web = hub.monitor_addr();

    // Malformed HTTP: actix-http answers (or closes) and must write nothing of its own.
    let mut big_header = b"GET /varz HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    big_header.extend(std::iter::repeat_n(b'a', 200 * 1024));
    big_header.extend_from_slice(b"\r\n\r\n");
    let mut long_line = b"GET /".to_vec();
    long_line.extend(std::iter::repeat_n(b'a', 100 * 1024));
    long_line.extend_from_slice(b" HTTP/1.1\r\nHost: x\r\n\r\n");
    for request in [
        b"GET /varz HTTP/9.9\r\nHost: x\r\n\r\n".to_vec(),
        big_header,
        long_line,
        b"GARBAGE\r\n\r\n".to_vec(),
    ] {
        hit(web, &request);
    }
    // The monitoring port still serves.
    let varz = hit(
        web,
        b"GET /varz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(
        varz.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&varz)
    );

    // Two failed handshakes: a server name with a control byte and a replacement character in
    // it (rustls quotes it in a warn of its own), and plain text on the TLS port.
    hit(
        hub.addr,
        &client_hello("lo\u{1b}[31m\u{fffd}alhost".as_bytes()),
    );
    hit(hub.addr, b"GARBAGE\r\n\r\n");
    let refused = |logs: &[String]| {
        logs.iter()
            .filter(|line| line.contains("TLS connection refused"))
            .count()
    };
    let deadline = Instant::now() + PATIENCE;
    while refused(&hub.logs()) < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    // Time for any further line to show (there must be none).
    std::thread::sleep(Duration::from_millis(500));
    let logs = hub.logs();
    let shown = logs.join("\n");
    assert_eq!(
        refused(&logs),
        2,
        "one hub line per failed handshake:\n{shown}"
    );
    for line in logs
        .iter()
        .filter(|line| line.contains("TLS connection refused"))
    {
        assert!(line.contains(" WARN tej_hub"), "{line}");
        assert!(line.contains("peer=127.0.0.1:"), "{line}");
    }
    let theirs: Vec<&String> = ["actix_http", "rustls"]
        .iter()
        .flat_map(|target| lines_from(&logs, target))
        .collect();
    assert!(
        theirs.is_empty(),
        "actix-http or rustls wrote to the log: {theirs:#?}"
    );
    for line in &logs {
        assert!(
            !line.contains('\u{1b}') && !line.contains('\u{fffd}'),
            "a client's bytes reached the log unescaped: {line:?}"
        );
        assert!(!line.contains(" ERROR "), "an ERROR line: {line}");
    }
}
