//! A listening socket, TCP or Unix, and the connections it accepts as one
//! type for hyper.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

use crate::config::values::Endpoint;

/// A socket bound on the caller's thread, before the server's runtime
/// exists.
pub enum Bound {
    Tcp(std::net::TcpListener),
    Unix(
        std::os::unix::net::UnixListener,
        std::path::PathBuf,
        super::unix::Placed,
    ),
}

/// The kernel's queue of connections not yet accepted (capped by
/// net.core.somaxconn, 4096 by default). std's 128 overflowed under a
/// burst of 5,000 connects: each dropped SYN cost its client a 1 s
/// retransmission, a health probe included (28 of 5,000 connects took
/// over 1 s, 29 s for the burst).
pub const BACKLOG: i32 = 4096;

impl Bound {
    pub fn bind(endpoint: &Endpoint) -> io::Result<Bound> {
        match endpoint {
            Endpoint::Tcp(addr) => {
                use socket2::{Domain, Socket, Type};
                let socket = Socket::new(Domain::for_address(*addr), Type::STREAM, None)?;
                socket.set_reuse_address(true)?;
                if addr.is_ipv6() {
                    socket.set_only_v6(true)?;
                }
                socket.bind(&(*addr).into())?;
                socket.listen(BACKLOG)?;
                socket.set_nonblocking(true)?;
                Ok(Bound::Tcp(socket.into()))
            }
            Endpoint::Unix(path) => {
                let (listener, placed) = super::unix::bind(path)?;
                Ok(Bound::Unix(listener, path.clone(), placed))
            }
        }
    }

    pub fn local(&self) -> io::Result<Endpoint> {
        match self {
            Bound::Tcp(l) => Ok(Endpoint::Tcp(l.local_addr()?)),
            Bound::Unix(_, path, _) => Ok(Endpoint::Unix(path.clone())),
        }
    }
}

pub enum Listener {
    Tcp(TcpListener),
    /// The socket file goes with the listener (removed on a clean stop).
    Unix {
        listener: UnixListener,
        _placed: super::unix::Placed,
    },
}

impl Listener {
    /// In the server's runtime.
    pub fn new(bound: Bound) -> io::Result<Listener> {
        match bound {
            Bound::Tcp(l) => Ok(Listener::Tcp(TcpListener::from_std(l)?)),
            Bound::Unix(l, _, placed) => Ok(Listener::Unix {
                listener: UnixListener::from_std(l)?,
                _placed: placed,
            }),
        }
    }

    pub async fn accept(&self) -> io::Result<Stream> {
        match self {
            Listener::Tcp(l) => {
                let (stream, _) = l.accept().await?;
                // Small gRPC messages and health answers: no Nagle delay.
                stream.set_nodelay(true)?;
                Ok(Stream::Tcp(stream))
            }
            Listener::Unix { listener, .. } => Ok(Stream::Unix(listener.accept().await?.0)),
        }
    }
}

pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Unix(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }
}
