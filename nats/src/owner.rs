//! One owner per instance on the stream: claims, and which messages count.
//!
//! An owner (an open cache, a rebuild, an `adopt`) first **claims** the
//! instance: it publishes `epoch=E base=B` on
//! `<prefix>.<instance>.owner`, conditional on that subject's last sequence
//! being the one it read, so two claimants never both win and epochs only
//! grow. Every WAL message then carries the publisher's epoch in the
//! [`EPOCH_HEADER`] header. A message counts (is part of the instance's
//! history) unless
//!
//! - it was stored after a claim of a newer epoch (a stale owner published
//!   it after being fenced: nobody was told it is kept), or
//! - a newer epoch claimed with a base at or below its LSN (the newer owner
//!   went on from an older point: the local WAL had lost that record, in a
//!   mode that allows it, and the LSN was given out again).
//!
//! A stale owner learns that it was fenced before it acknowledges anything:
//! a publish counts as replicated only once the owner subject's last
//! message is still its own claim, read after JetStream's acknowledgement.

use std::time::Duration;

use async_nats::jetstream::{self, stream::Stream};
use bytes::Bytes;
use writebehind_wal::Lsn;

use crate::names::Names;
use crate::session::{last_message, next_on};
use crate::Result;

/// The header naming the epoch a WAL or checkpoint message was published under.
pub(crate) const EPOCH_HEADER: &str = "Wb-Epoch";

/// Attempts at a claim when other claimants keep winning the race.
const CLAIM_ATTEMPTS: u32 = 8;

/// One claim on the owner subject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Claim {
    pub(crate) epoch: u64,
    /// The first LSN the owner may write; messages of older epochs at or
    /// past it were superseded. `Lsn::MAX`: the owner read every message
    /// before it wrote (nothing superseded).
    pub(crate) base: Lsn,
    /// Its stream sequence.
    pub(crate) seq: u64,
}

/// Every claim on an instance, in stream order.
#[derive(Clone, Debug, Default)]
pub(crate) struct Owners {
    claims: Vec<Claim>,
}

impl Owners {
    #[cfg(test)]
    pub(crate) fn from_claims(claims: Vec<Claim>) -> Owners {
        Owners { claims }
    }

    pub(crate) fn newest(&self) -> Option<Claim> {
        self.claims.last().copied()
    }

    /// The epochs claimed so far, and 0 (messages from before claims existed).
    pub(crate) fn epochs(&self) -> impl Iterator<Item = u64> + '_ {
        std::iter::once(0).chain(self.claims.iter().map(|c| c.epoch))
    }

    /// Whether a message of `epoch` stored at `seq` and holding `lsn`
    /// belongs to the instance's history.
    pub(crate) fn counts(&self, epoch: u64, seq: u64, lsn: Lsn) -> bool {
        self.claims
            .iter()
            .filter(|c| c.epoch > epoch)
            .all(|c| c.seq > seq && lsn < c.base)
    }
}

/// The epoch a message was published under (0: before claims existed).
pub(crate) fn epoch_of(m: &jetstream::message::StreamMessage) -> u64 {
    m.headers
        .get(EPOCH_HEADER)
        .and_then(|v| v.as_str().parse().ok())
        .unwrap_or(0)
}

/// Reads every claim on the owner subject.
pub(crate) async fn owners(n: &Names, stream: &Stream) -> Result<Owners> {
    let subject = n.owner_subject();
    let mut claims = Vec::new();
    let mut seq = 1;
    while let Some(m) = next_on(n, stream, &subject, seq).await? {
        seq = m.sequence + 1;
        claims.push(parse(n, &m)?);
    }
    Ok(Owners { claims })
}

fn parse(n: &Names, m: &jetstream::message::StreamMessage) -> Result<Claim> {
    let text = std::str::from_utf8(&m.payload).unwrap_or("");
    let field = |name: &str| {
        text.split(' ')
            .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse::<u64>().ok())
    };
    match (field("epoch"), field("base")) {
        (Some(epoch), Some(base)) => Ok(Claim {
            epoch,
            base,
            seq: m.sequence,
        }),
        _ => Err(n.error(format!(
            "message {} on {} is not a claim: {:?}",
            m.sequence,
            n.owner_subject(),
            text.chars().take(80).collect::<String>()
        ))),
    }
}

/// The newest claim (one request): what an owner checks before it
/// counts a publish as replicated.
pub(crate) async fn newest(n: &Names, stream: &Stream) -> Result<Option<Claim>> {
    match last_message(n, stream, &n.owner_subject()).await? {
        Some(m) => Ok(Some(parse(n, &m)?)),
        None => Ok(None),
    }
}

/// Takes the instance over: the next epoch (at least `at_least`), with
/// `base` the first LSN this owner may write.
pub(crate) async fn claim(
    n: &Names,
    js: &jetstream::Context,
    stream: &Stream,
    at_least: u64,
    base: Lsn,
) -> Result<Claim> {
    let subject = n.owner_subject();
    let mut pause = Duration::from_millis(20);
    for _ in 0..CLAIM_ATTEMPTS {
        let (last_seq, last_epoch) = match newest(n, stream).await? {
            Some(c) => (c.seq, c.epoch),
            None => (0, 0),
        };
        let epoch = (last_epoch + 1).max(at_least);
        let body = format!("epoch={epoch} base={base}");
        let sent = js
            .send_publish(
                subject.clone(),
                jetstream::message::PublishMessage::build()
                    .payload(Bytes::from(body))
                    .expected_last_subject_sequence(last_seq),
            )
            .await
            .map_err(|e| n.error(format!("claiming {}: {e}", n.instance)))?
            .await;
        match sent {
            Ok(ack) => {
                tracing::info!(instance = %n.instance, epoch, base, seq = ack.sequence, "instance claimed on the stream");
                return Ok(Claim {
                    epoch,
                    base,
                    seq: ack.sequence,
                });
            }
            Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => {
                // Another claimant won this round: read again, claim above it.
                tokio::time::sleep(pause + Duration::from_millis(fastrand::u64(0..20))).await;
                pause = (pause * 2).min(Duration::from_millis(500));
            }
            Err(e) => return Err(n.error(format!("claiming {}: {e}", n.instance))),
        }
    }
    Err(n.error(format!(
        "claiming {}: other owners kept claiming it ({CLAIM_ATTEMPTS} attempts)",
        n.instance
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(epoch: u64, seq: u64, base: Lsn) -> Claim {
        Claim { epoch, base, seq }
    }

    #[test]
    fn a_message_stored_after_a_newer_claim_does_not_count() {
        let o = Owners::from_claims(vec![c(1, 10, Lsn::MAX), c(2, 50, Lsn::MAX)]);
        assert!(o.counts(1, 49, 500));
        assert!(!o.counts(1, 51, 500));
        assert!(o.counts(2, 51, 500));
        // Messages from before claims existed.
        assert!(o.counts(0, 5, 1));
        assert!(!o.counts(0, 11, 1));
    }

    #[test]
    fn a_newer_base_supersedes_older_lsns_at_or_past_it() {
        let o = Owners::from_claims(vec![c(1, 10, Lsn::MAX), c(2, 50, 100), c(3, 90, 60)]);
        assert!(o.counts(1, 40, 59));
        assert!(!o.counts(1, 40, 60));
        assert!(!o.counts(1, 40, 99));
        assert!(o.counts(2, 60, 59));
        assert!(!o.counts(2, 60, 60));
        assert!(o.counts(3, 95, 60));
        assert_eq!(o.epochs().collect::<Vec<_>>(), vec![0, 1, 2, 3]);
    }
}
