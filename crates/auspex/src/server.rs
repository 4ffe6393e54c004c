//! Running a network server off the collection loop: each API (HTTP, gRPC)
//! gets a thread of its own with a single-threaded tokio runtime, so the
//! loop never waits for a client.

use std::future::Future;
use std::net::SocketAddr;

use anyhow::Context;

/// Binds `addr` now (so a taken port is an error at start, naming `flag`)
/// and runs `serve` on it in the background. Returns the bound address
/// (useful when the port was 0) and the thread.
pub fn spawn<F, Fut>(
    addr: SocketAddr,
    what: &str,
    flag: &str,
    serve: F,
) -> anyhow::Result<(SocketAddr, std::thread::JoinHandle<()>)>
where
    F: FnOnce(tokio::net::TcpListener) -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("cannot listen on {addr} for the {what} ({flag})"))?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let thread = std::thread::Builder::new()
        .name(flag.trim_start_matches("--").into())
        .spawn(move || {
            // Serving needs no capability; dropped here, since
            // capabilities are per thread and the lockdown after loading
            // reaches only the thread that loads.
            crate::lockdown::drop_all_for_this_thread();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime");
            runtime.block_on(async move {
                let listener =
                    tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
                serve(listener).await
            });
        })?;
    Ok((bound, thread))
}
