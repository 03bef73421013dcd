//! A connection to NATS, its JetStream context and stream, and reading one
//! message off a subject.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_nats::jetstream::{self, stream::Stream};
use tokio::sync::Notify;

use crate::names::{servers, Names};
use crate::{Result, REQUEST};

/// A connection and its JetStream context.
pub(crate) struct Session {
    pub(crate) client: async_nats::Client,
    pub(crate) js: jetstream::Context,
    pub(crate) stream: Stream,
    /// Set when the connection dropped, even if the client is connected
    /// again by now: what was in flight on it may be lost.
    pub(crate) lost: Arc<AtomicBool>,
    pub(crate) lost_wake: Arc<Notify>,
}

pub(crate) async fn connect(n: &Names) -> Result<Session> {
    let lost = Arc::new(AtomicBool::new(false));
    let lost_wake = Arc::new(Notify::new());
    let (l, w) = (lost.clone(), lost_wake.clone());
    let connecting = async_nats::ConnectOptions::new()
        .connection_timeout(REQUEST)
        .request_timeout(Some(REQUEST))
        .event_callback(move |event| {
            let (l, w) = (l.clone(), w.clone());
            async move {
                if matches!(event, async_nats::Event::Disconnected) {
                    l.store(true, Ordering::Release);
                    w.notify_one();
                }
            }
        })
        .connect(servers(&n.url)?);
    let client = tokio::time::timeout(REQUEST * 2, connecting)
        .await
        .map_err(|_| n.error(format!("no connection within {:?}", REQUEST * 2)))?
        .map_err(|e| n.error(format!("cannot connect: {e}")))?;
    let js = jetstream::context::ContextBuilder::new()
        .timeout(REQUEST)
        .ack_timeout(REQUEST)
        .build(client.clone());
    let config = jetstream::stream::Config {
        name: n.stream.clone(),
        subjects: vec![format!("{}.>", n.prefix)],
        num_replicas: n.replicas,
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    };
    let stream = js
        .get_or_create_stream(config)
        .await
        .map_err(|e| n.error(format!("stream {}: {e}", n.stream)))?;
    Ok(Session {
        client,
        js,
        stream,
        lost,
        lost_wake,
    })
}

/// The last message on `subject`, if any.
pub(crate) async fn last_message(
    n: &Names,
    stream: &Stream,
    subject: &str,
) -> Result<Option<jetstream::message::StreamMessage>> {
    use async_nats::jetstream::stream::LastRawMessageErrorKind;
    match stream.get_last_raw_message_by_subject(subject).await {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(n.error(format!("reading the last message of {subject}: {e}"))),
    }
}

/// The first message on `subject` at or after stream sequence `seq`.
pub(crate) async fn next_on(
    n: &Names,
    stream: &Stream,
    subject: &str,
    seq: u64,
) -> Result<Option<jetstream::message::StreamMessage>> {
    let got = stream
        .raw_message_builder()
        .sequence(seq)
        .next_by_subject(subject.to_owned())
        .send()
        .await;
    match got {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(n.error(format!("reading {subject} at {seq}: {e}"))),
    }
}
