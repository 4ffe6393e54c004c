//! The workloads: each runs one kind of operation in a loop for a while and
//! returns operations per second.

use std::hint::black_box;
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use clap::ValueEnum;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// A syscall the agent has no interest in: must not slow down.
    Getppid,
    /// fork + exec + exit of /bin/true.
    ForkExec,
    /// Loopback TCP connect, accept, close.
    Tcp,
    /// UDP sendto + recvfrom between two loopback sockets.
    Udp,
    /// open + close of /dev/null.
    OpenClose,
}

pub const ALL: [Mode; 5] = [
    Mode::Getppid,
    Mode::ForkExec,
    Mode::Tcp,
    Mode::Udp,
    Mode::OpenClose,
];

/// Runs `mode` for `duration`; operations per second.
pub fn run(mode: Mode, duration: Duration) -> f64 {
    let start = Instant::now();
    let mut ops = 0u64;
    match mode {
        Mode::Getppid => {
            while start.elapsed() < duration {
                for _ in 0..1000 {
                    black_box(nix::unistd::getppid());
                }
                ops += 1000;
            }
        }
        Mode::ForkExec => {
            while start.elapsed() < duration {
                Command::new("/bin/true").status().expect("/bin/true runs");
                ops += 1;
            }
        }
        Mode::Tcp => {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            while start.elapsed() < duration {
                let client = TcpStream::connect(addr).unwrap();
                let (server, _) = listener.accept().unwrap();
                // Close with a reset: no TIME_WAIT, so a long run never
                // runs out of ephemeral ports.
                let linger = nix::libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                };
                let _ = nix::sys::socket::setsockopt(
                    &client,
                    nix::sys::socket::sockopt::Linger,
                    &linger,
                );
                drop((client, server));
                ops += 1;
            }
        }
        Mode::Udp => {
            let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
            let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
            let to = rx.local_addr().unwrap();
            let mut buf = [0u8; 64];
            while start.elapsed() < duration {
                for _ in 0..100 {
                    tx.send_to(b"ping", to).unwrap();
                    black_box(rx.recv_from(&mut buf).unwrap());
                }
                ops += 100;
            }
        }
        Mode::OpenClose => {
            while start.elapsed() < duration {
                for _ in 0..100 {
                    black_box(std::fs::File::open("/dev/null").unwrap());
                }
                ops += 100;
            }
        }
    }
    ops as f64 / start.elapsed().as_secs_f64()
}
