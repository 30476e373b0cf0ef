//! sd_notify(3) that never blocks the daemon. Its runtime is one thread, and a datagram sent to
//! a notify socket whose queue is full (`net.unix.max_dgram_qlen`, 10 by default) blocks in
//! send(2) until the reader drains it: a supervisor that reads only READY (or a systemd busy
//! for a while) would stall every site. So each message is sent without waiting: STATUS and
//! WATCHDOG are dropped when the queue is full (the next one follows), READY and RELOADING
//! are tried again for a few seconds and then given up with a warning.

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// How long READY and RELOADING are tried against a full queue.
const PATIENCE: Duration = Duration::from_secs(5);
const EVERY: Duration = Duration::from_millis(50);

/// Sends `state` (`READY=1`, `STATUS=…`) once, without waiting. `Ok(false)`: the queue was
/// full and nothing was sent. Without `$NOTIFY_SOCKET` there is nobody to tell: `Ok(true)`.
pub fn try_send(state: &str) -> io::Result<bool> {
    match std::env::var_os("NOTIFY_SOCKET") {
        Some(path) => send_to(&path, state),
        None => Ok(true),
    }
}

/// [`try_send`] to the socket at `path` (`@name`: an abstract socket).
fn send_to(path: &std::ffi::OsStr, state: &str) -> io::Result<bool> {
    let sock = UnixDatagram::unbound()?;
    sock.set_nonblocking(true)?;
    let sent = match path.as_bytes().strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)
        }
        None => sock.send_to(state.as_bytes(), path),
    };
    match sent {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
        Err(e) => Err(e),
    }
}

/// A message the service manager must see (READY, RELOADING): tried for a few seconds against
/// a full queue, then given up with a warning rather than stalling the daemon.
pub async fn tell(state: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match try_send(state) {
            Ok(true) => return,
            Ok(false) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(EVERY).await;
            }
            Ok(false) => {
                let what = state.trim_end();
                return tracing::warn!(
                    "cannot tell the service manager {what}: its notify socket is full"
                );
            }
            Err(e) => return tracing::warn!(error = %e, "cannot notify the service manager"),
        }
    }
}

/// STATUS= or WATCHDOG=1: sent if the queue has room, else dropped (the next one follows).
pub fn hint(state: &str) {
    if let Err(e) = try_send(state) {
        tracing::debug!(error = %e, "cannot notify the service manager");
    }
}

/// `$WATCHDOG_USEC` when it is meant for this process (systemd's WatchdogSec=).
pub fn watchdog() -> Option<Duration> {
    sd_notify::watchdog_enabled()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full queue answers `Ok(false)` at once instead of blocking.
    #[test]
    fn a_full_queue_is_reported_not_waited_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify.sock");
        let reader = UnixDatagram::bind(&path).expect("bind");
        let writer = UnixDatagram::unbound().expect("socket");
        writer.set_nonblocking(true).expect("nonblocking");
        let mut n = 0;
        while writer.send_to(b"X=1", &path).is_ok() {
            n += 1;
            assert!(n < 100_000);
        }
        let path = path.as_os_str();
        assert!(!send_to(path, "STATUS=full\n").expect("no error"));
        let mut buf = [0u8; 16];
        reader.recv(&mut buf).expect("drain one");
        assert!(send_to(path, "STATUS=room\n").expect("no error"));
    }
}
