//! `http-probe`: a tiny HTTP health probe for the distroless runtime image,
//! which has no shell, curl or wget. Standard library only; compiled with a
//! bare `rustc` in the image build (deploy/docker/Dockerfile), not part of the
//! cargo workspace.
//!
//!     http-probe [HOST:PORT] [PATH]     (defaults: 127.0.0.1:9100 /healthz)
//!
//! Exits 0 when the server answers 2xx within 2 s, 1 otherwise (with the reason
//! on stderr). The compose file uses it for the relay's `GET /healthz`; in
//! Kubernetes the kubelet's own `httpGet` probe does the same job.

use std::io::{Error, ErrorKind, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:9100".to_owned());
    let path = args.next().unwrap_or_else(|| "/healthz".to_owned());
    match probe(&addr, &path) {
        Ok(status) if (200..300).contains(&status) => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("http-probe: GET http://{addr}{path}: HTTP {status}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("http-probe: GET http://{addr}{path}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Sends one `GET` and returns the status code of the answer.
fn probe(addr: &str, path: &str) -> std::io::Result<u16> {
    let socket = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| Error::new(ErrorKind::NotFound, "address resolves to nothing"))?;
    let mut stream = TcpStream::connect_timeout(&socket, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: http-probe\r\nConnection: close\r\n\r\n"
    )?;
    // The status line is all we need: "HTTP/1.1 200 OK".
    let mut head = Vec::with_capacity(64);
    let mut buf = [0u8; 64];
    while !head.contains(&b'\n') && head.len() < 1024 {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next().map(str::parse::<u16>)) {
        (Some(version), Some(Ok(status))) if version.starts_with("HTTP/") => Ok(status),
        _ => Err(Error::new(
            ErrorKind::InvalidData,
            format!("not an HTTP answer: {:?}", line.lines().next().unwrap_or("")),
        )),
    }
}
