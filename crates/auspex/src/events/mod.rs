//! `auspex events`: watch a running agent from a terminal. Connects to its
//! gRPC stream (the Unix socket by default, or TCP with TLS), subscribes
//! with the same filters as auspex.v1.Events/Subscribe, and prints one
//! compact line per event (coloured on a terminal) or, with `-o json`, the
//! event documents as the agent writes them. When the agent goes away
//! (restarted, upgraded) it says so on stderr and reconnects.

mod connect;
mod line;

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tonic::Code;

use crate::cli::{EventsArgs, EventsFormat};
use connect::Target;

pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/client/auspex.v1.rs"));
}

/// Reconnection: the first retry after this, doubling up to the most.
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MOST: Duration = Duration::from_secs(5);

pub fn events(args: &EventsArgs) -> anyhow::Result<()> {
    let target = Target::parse(args)?;
    let request = pb::SubscribeRequest {
        types: args.types.clone(),
        container_ids: args.containers.clone(),
        pids: args.pids.clone(),
        exes: args.exes.clone(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a tokio runtime")?;
    let mut out = anstream::AutoStream::new(std::io::stdout(), args.color.into());
    runtime.block_on(async {
        let mut retry = RETRY_FIRST;
        let mut lost: Option<Instant> = None;
        loop {
            let stream = match subscribe(&target, &request).await {
                Ok(stream) => stream,
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Retry(why)) => {
                    if lost.is_none() {
                        eprintln!("auspex events: cannot reach {target}: {why}; retrying");
                        lost = Some(Instant::now());
                    }
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(RETRY_MOST);
                    continue;
                }
            };
            match lost.take() {
                Some(since) => eprintln!(
                    "auspex events: reconnected to {target} after {:.1} s (events in between \
                     are not shown)",
                    since.elapsed().as_secs_f64()
                ),
                None => eprintln!("auspex events: connected to {target}"),
            }
            retry = RETRY_FIRST;
            let why = print(stream, args.output, &mut out).await?;
            eprintln!("auspex events: {why}; reconnecting to {target}");
            lost = Some(Instant::now());
        }
    })
}

pub(crate) enum Failure {
    /// Worth trying again: the agent is not there (yet).
    Retry(String),
    /// It answered and refused: a bad filter, a certificate refused.
    Fatal(anyhow::Error),
}

async fn subscribe(
    target: &Target,
    request: &pb::SubscribeRequest,
) -> Result<tonic::Streaming<pb::Event>, Failure> {
    let channel = target.connect().await?;
    let mut client = pb::events_client::EventsClient::new(channel);
    match client.subscribe(request.clone()).await {
        Ok(response) => Ok(response.into_inner()),
        // Under TLS 1.3 the agent refuses a client certificate after the
        // client's side of the handshake is done: it shows on the call.
        Err(s)
            if std::error::Error::source(&s)
                .and_then(connect::refused_certificate)
                .is_some() =>
        {
            Err(Failure::Fatal(anyhow::anyhow!(
                "{target}: a certificate was refused: {}",
                s.message()
            )))
        }
        Err(s)
            if matches!(
                s.code(),
                Code::Unavailable | Code::Unknown | Code::Cancelled
            ) =>
        {
            Err(Failure::Retry(s.message().to_string()))
        }
        Err(s) => Err(Failure::Fatal(anyhow::anyhow!(
            "{target} refused the subscription: {:?}: {}",
            s.code(),
            s.message()
        ))),
    }
}

/// Prints events until the stream ends; returns how it ended.
async fn print(
    mut stream: tonic::Streaming<pb::Event>,
    format: EventsFormat,
    out: &mut impl Write,
) -> anyhow::Result<String> {
    loop {
        let event = match stream.message().await {
            Ok(Some(event)) => event,
            Ok(None) => return Ok("the agent ended the stream (it stopped)".into()),
            Err(s) => return Ok(format!("the stream broke: {}", s.message())),
        };
        let written = match format {
            EventsFormat::Json => writeln!(out, "{}", event.json),
            EventsFormat::Text => writeln!(out, "{}", line::line(&event.r#type, &event.json)),
        };
        if let Err(e) = written.and_then(|()| out.flush()) {
            // `auspex events | head`: the reader is done.
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            bail!("cannot write to stdout: {e}");
        }
    }
}
