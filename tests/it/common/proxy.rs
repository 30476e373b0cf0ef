//! A TCP fault proxy on 127.0.0.1 in front of the emulator: passes traffic through, or refuses
//! connections (nothing listens), stalls them (accepts and never answers) or resets them, on
//! command. Switching mode also ends the connections already open, so a pooled keep-alive
//! connection cannot dodge the fault.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass = 0,
    Refuse = 1,
    Stall = 2,
    Reset = 3,
}

pub struct FaultProxy {
    pub port: u16,
    mode: Arc<AtomicU8>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl FaultProxy {
    pub fn start(upstream_port: u16) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let mode = Arc::new(AtomicU8::new(Mode::Pass as u8));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (m, o) = (mode.clone(), open.clone());
        std::thread::spawn(move || accept_loop(listener, port, upstream_port, m, o));
        FaultProxy { port, mode, open }
    }

    pub fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
        for s in self.open.lock().expect("lock").drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
        // Wake the accept loop so Refuse closes the listener (and Pass reopens it).
        let _ = TcpStream::connect_timeout(
            &([127, 0, 0, 1], self.port).into(),
            Duration::from_millis(200),
        );
    }
}

fn accept_loop(
    mut listener: TcpListener,
    port: u16,
    upstream: u16,
    mode: Arc<AtomicU8>,
    open: Arc<Mutex<Vec<TcpStream>>>,
) {
    loop {
        if mode.load(Ordering::SeqCst) == Mode::Refuse as u8 {
            drop(listener);
            // Connections are refused until the mode changes; then listen again on the same port.
            while mode.load(Ordering::SeqCst) == Mode::Refuse as u8 {
                std::thread::sleep(Duration::from_millis(20));
            }
            listener = loop {
                match TcpListener::bind(("127.0.0.1", port)) {
                    Ok(l) => break l,
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            };
            continue;
        }
        let Ok((client, _)) = listener.accept() else {
            continue;
        };
        match mode.load(Ordering::SeqCst) {
            m if m == Mode::Pass as u8 => {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let mut keep = open.lock().expect("lock");
                for s in [&client, &server] {
                    if let Ok(c) = s.try_clone() {
                        keep.push(c);
                    }
                }
                drop(keep);
                pipe(
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                pipe(server, client);
            }
            m if m == Mode::Stall as u8 => {
                // Read and never answer; the connection stays open until the mode changes.
                if let Ok(c) = client.try_clone() {
                    open.lock().expect("lock").push(c);
                }
                std::thread::spawn(move || {
                    let mut sink = client;
                    let mut buf = [0u8; 4096];
                    while matches!(sink.read(&mut buf), Ok(n) if n > 0) {}
                });
            }
            _ => reset(client),
        }
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

/// Close with SO_LINGER 0: the peer sees a TCP reset, not an orderly close.
fn reset(s: TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a correctly sized option value.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(s);
}
