//! The HTTP side of `GET /metrics`: one fixed path on (usually) loopback needs no HTTP server
//! crate. Each connection is a task of its own, its head read within [`HEAD_DEADLINE`] (8 KiB
//! at most), answered, and closed. The listener always accepts: past [`MAX_CONNECTIONS`] open at
//! once a new one is closed unanswered, so clients that connect and send nothing (issue 22: four
//! of them held every slot for 10 s) cost a slot each for a few seconds and never stop a scrape.
//! The body is the Prometheus text format 0.0.4 (`text/plain; version=0.0.4`), or OpenMetrics
//! text when the scraper asks for it in `Accept` (Prometheus does); both are prometheus-client's
//! own encoders ([`Page::render`]).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::page::Page;

/// Connections open at once; one more is closed as soon as it is accepted.
const MAX_CONNECTIONS: usize = 64;
/// The time a client has to send its request head (a scraper sends it at once).
const HEAD_DEADLINE: Duration = Duration::from_secs(5);
/// A connection's whole life: its request head read, the page made and written.
const DEADLINE: Duration = Duration::from_secs(10);
/// The longest request head read.
const MAX_HEAD: usize = 8 * 1024;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Answers connections on `listener` with `page` until `token` is cancelled.
pub(super) async fn run(listener: TcpListener, page: Arc<Page>, token: CancellationToken) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = token.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((_, peer)) if conns.len() >= MAX_CONNECTIONS => {
                    // Closed (dropped) unanswered; a waiting one would hold a descriptor.
                    debug!(%peer, "metrics: too many connections; one closed");
                }
                Ok((stream, peer)) => {
                    let page = page.clone();
                    conns.spawn(async move {
                        match tokio::time::timeout(DEADLINE, answer(stream, &page)).await {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => debug!(%peer, error = %e, "metrics: connection failed"),
                            Err(_) => debug!(%peer, "metrics: connection timed out"),
                        }
                    });
                }
                Err(e) => {
                    // Out of descriptors, say: not a reason to stop, nor to spin.
                    warn!(error = %e, "metrics: cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    conns.shutdown().await;
}

/// Reads one request head and answers it; the connection is closed after.
async fn answer(mut stream: TcpStream, page: &Arc<Page>) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    let head_by = tokio::time::Instant::now() + HEAD_DEADLINE;
    let end = loop {
        let n = match tokio::time::timeout_at(head_by, stream.read(&mut chunk)).await {
            Ok(read) => read?,
            Err(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no request head within the deadline",
                ))
            }
        };
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        if buf.len() > MAX_HEAD {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "",
                b"",
                true,
            )
            .await;
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut lines = head.split("\r\n");
    let mut request = lines.next().unwrap_or("").split(' ');
    let (method, target) = (request.next().unwrap_or(""), request.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let openmetrics = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("accept:") && l.contains("application/openmetrics-text")
    });
    let with_body = method != "HEAD";
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => match page.render(openmetrics).await {
            Ok(body) => {
                let ctype = if openmetrics {
                    OPENMETRICS
                } else {
                    prometheus_client::encoding::prometheus_text::CONTENT_TYPE
                };
                respond(&mut stream, "200 OK", ctype, body.as_bytes(), with_body).await
            }
            Err(e) => {
                warn!(error = %e, "metrics: cannot make the page");
                let body = format!("{e}\n");
                respond(
                    &mut stream,
                    "500 Internal Server Error",
                    "text/plain; charset=utf-8",
                    body.as_bytes(),
                    with_body,
                )
                .await
            }
        },
        (_, "/metrics") => {
            let body = b"GET or HEAD only\n";
            respond(
                &mut stream,
                "405 Method Not Allowed",
                "text/plain",
                body,
                with_body,
            )
            .await
        }
        _ => {
            let body = b"not found: the metrics are at /metrics\n";
            respond(&mut stream, "404 Not Found", "text/plain", body, with_body).await
        }
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    ctype: &str,
    body: &[u8],
    with_body: bool,
) -> std::io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status.starts_with("405") {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if with_body {
        bytes.extend_from_slice(body);
    }
    stream.write_all(&bytes).await?;
    stream.shutdown().await
}
