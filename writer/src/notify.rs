//! Cross-instance invalidation on PostgreSQL: after a flush commits, the
//! instance announces the keys it wrote with `NOTIFY`; every other instance
//! `LISTEN`s and drops its clean copy of those keys.
//!
//! The same channel carries explicit invalidations (`invalidate`,
//! `invalidate_prefix`): `{"i":…,"x":["key",…],"p":["prefix",…]}`, on which
//! receivers drop clean copies only.
//!
//! Payloads are JSON `{"i":"<instance id>","k":["key",…],"v":[version|null,…]}`,
//! each under PostgreSQL's 8000-byte limit. The sender's id lets it ignore
//! its own announcements; the version written lets a receiver keep a copy
//! that is already as new (a late announcement must not make it forget the
//! version its next put is checked against). Notifications are best-effort: one lost while a listener
//! reconnects leaves a clean copy stale until its TTL, so set a clean TTL
//! when readers must converge even then. Other backends have no `NOTIFY`:
//! there the clean TTL alone bounds staleness.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use writebehind_core::Key;

use crate::error::Result;
use crate::ident::Backend;
use crate::writer::Writer;

/// Most bytes of one payload (PostgreSQL refuses 8000 and more).
pub const MAX_PAYLOAD: usize = 7_900;

/// Longest channel name PostgreSQL keeps (NAMEDATALEN - 1).
const MAX_CHANNEL: usize = 63;

#[derive(Serialize, Deserialize)]
struct Payload<'a> {
    #[serde(borrow)]
    i: std::borrow::Cow<'a, str>,
    #[serde(default)]
    k: Vec<String>,
    #[serde(default)]
    v: Vec<Option<i64>>,
}

/// An explicit invalidation: keys (`x`) and prefixes (`p`).
#[derive(Serialize, Deserialize)]
struct Invalidation<'a> {
    #[serde(borrow)]
    i: std::borrow::Cow<'a, str>,
    #[serde(default)]
    x: Vec<String>,
    #[serde(default)]
    p: Vec<String>,
}

/// What another instance announced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Announcement {
    /// It flushed these keys, with the versions written.
    Flushed(Vec<Flushed>),
    /// It was told these keys, and every key under these prefixes, changed
    /// behind the caches' backs: drop clean copies.
    Invalidated {
        /// Whole keys.
        keys: Vec<String>,
        /// Key prefixes.
        prefixes: Vec<String>,
    },
}

/// Splits an invalidation of `keys` and `prefixes` into payloads of at most
/// [`MAX_PAYLOAD`] bytes. A key or prefix too long for any payload is left
/// out and counted in the second value.
pub fn invalidation_payloads(
    instance: &str,
    keys: &[&str],
    prefixes: &[&str],
) -> (Vec<String>, usize) {
    // `{"i":` + <id> + `,"x":[` + `],"p":[` + `]}`
    let head = serde_json::to_string(instance).map_or(usize::MAX, |s| s.len().saturating_add(19));
    let mut out = Vec::new();
    let mut skipped = 0;
    let mut batch = Invalidation {
        i: instance.into(),
        x: Vec::new(),
        p: Vec::new(),
    };
    let mut size = head;
    let mut push = |batch: &mut Invalidation<'_>| {
        if !batch.x.is_empty() || !batch.p.is_empty() {
            if let Ok(s) = serde_json::to_string(&batch) {
                out.push(s);
            }
            batch.x.clear();
            batch.p.clear();
        }
    };
    let items = keys
        .iter()
        .map(|k| (false, *k))
        .chain(prefixes.iter().map(|p| (true, *p)));
    for (is_prefix, text) in items {
        let one = serde_json::to_string(text).map_or(usize::MAX, |s| s.len());
        if head.saturating_add(one) > MAX_PAYLOAD {
            skipped += 1;
            continue;
        }
        // One comma per item.
        if size + one + 1 > MAX_PAYLOAD {
            push(&mut batch);
            size = head;
        }
        size += one + 1;
        if is_prefix {
            batch.p.push(text.to_owned());
        } else {
            batch.x.push(text.to_owned());
        }
    }
    push(&mut batch);
    (out, skipped)
}

/// The sender's instance id and what one payload announces, or `None` when
/// it is not a writebehind payload.
pub fn decode_announcement(payload: &str) -> Option<(String, Announcement)> {
    if let Some((from, keys)) = decode(payload) {
        if !keys.is_empty() {
            return Some((from, Announcement::Flushed(keys)));
        }
    }
    let inv: Invalidation<'_> = serde_json::from_str(payload).ok()?;
    if inv.x.is_empty() && inv.p.is_empty() {
        return None;
    }
    Some((
        inv.i.into_owned(),
        Announcement::Invalidated {
            keys: inv.x,
            prefixes: inv.p,
        },
    ))
}

/// The channel on which flushes of `table` are announced: `wb_<table>`, or
/// a prefix and a hash of the name when that is longer than 63 bytes.
pub fn channel(table: &str) -> String {
    let name = format!("wb_{table}");
    if name.len() <= MAX_CHANNEL {
        return name;
    }
    // FNV-1a: stable across builds and platforms, unlike the std hasher.
    let hash = table.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let mut cut = MAX_CHANNEL - 17;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}_{hash:016x}", &name[..cut])
}

/// Splits `(key, version written)` pairs into payloads of at most
/// [`MAX_PAYLOAD`] bytes. A key too long to fit in any payload is left out
/// and counted in the second value.
pub fn payloads<'k>(
    instance: &str,
    keys: impl IntoIterator<Item = (&'k str, Option<i64>)>,
) -> (Vec<String>, usize) {
    // `{"i":` + <id> + `,"k":[` + `],"v":[` + `]}`
    let head = serde_json::to_string(instance).map_or(usize::MAX, |s| s.len().saturating_add(19));
    let mut out = Vec::new();
    let mut skipped = 0;
    let mut batch = Payload {
        i: instance.into(),
        k: Vec::new(),
        v: Vec::new(),
    };
    let mut size = head;
    let mut push = |batch: &mut Payload<'_>| {
        if !batch.k.is_empty() {
            if let Ok(s) = serde_json::to_string(&batch) {
                out.push(s);
            }
            batch.k.clear();
            batch.v.clear();
        }
    };
    for (key, version) in keys {
        let quoted = serde_json::to_string(key).map_or(usize::MAX, |s| s.len());
        let number = version.map_or(4, |v| v.to_string().len());
        // Two commas per key after the first.
        let one = quoted.saturating_add(number);
        if head.saturating_add(one) > MAX_PAYLOAD {
            skipped += 1;
            continue;
        }
        if size + one + 2 > MAX_PAYLOAD {
            push(&mut batch);
            size = head;
        }
        size += one + if batch.k.is_empty() { 0 } else { 2 };
        batch.k.push(key.to_owned());
        batch.v.push(version);
    }
    push(&mut batch);
    (out, skipped)
}

/// A key another instance flushed, with the row version it wrote (`None`:
/// unknown or deleted).
pub type Flushed = (String, Option<i64>);

/// The sender's instance id and the keys of one payload, or `None` when it
/// is not a writebehind payload.
pub fn decode(payload: &str) -> Option<(String, Vec<Flushed>)> {
    let p: Payload<'_> = serde_json::from_str(payload).ok()?;
    let versions = if p.v.is_empty() {
        vec![None; p.k.len()]
    } else if p.v.len() == p.k.len() {
        p.v
    } else {
        return None;
    };
    Some((p.i.into_owned(), p.k.into_iter().zip(versions).collect()))
}

/// What the listener task reports, for tests and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerStatus {
    /// Connection attempts made (successful or not).
    pub attempts: u64,
    /// Whether the listener is subscribed right now.
    pub listening: bool,
    /// Times the connection was lost after subscribing (notifications sent
    /// meanwhile are lost).
    pub gaps: u64,
}

/// A background task that `LISTEN`s on a table's channel. Stops when dropped.
#[derive(Debug)]
pub struct Listener {
    task: tokio::task::JoinHandle<()>,
    status: watch::Receiver<ListenerStatus>,
}

impl Listener {
    /// The task's current status.
    pub fn status(&self) -> ListenerStatus {
        *self.status.borrow()
    }

    /// Waits until the first connection attempt finished (either way), at
    /// most `timeout`. Returns whether the listener is subscribed.
    pub async fn first_attempt(&self, timeout: std::time::Duration) -> bool {
        let mut rx = self.status.clone();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|s| s.attempts > 0)).await;
        let listening = rx.borrow().listening;
        listening
    }

    /// Stops the task.
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Called with the keys another instance flushed.
pub type OnKeys = Arc<dyn Fn(&[Flushed]) + Send + Sync>;

/// Called with what another instance announced.
pub type OnAnnouncement = Arc<dyn Fn(Announcement) + Send + Sync>;

impl Writer {
    /// Whether this backend can announce flushes (PostgreSQL only).
    pub fn supports_notify(&self) -> bool {
        self.backend() == Backend::Postgres
    }

    /// The channel this writer announces its table's flushes on.
    pub fn notify_channel(&self) -> String {
        channel(self.config().table.table.as_str())
    }

    /// Announces that `keys` were flushed (with the row version written,
    /// when known), in one statement of as many `pg_notify` calls as
    /// payloads. Returns the number of notifications sent; 0 (and nothing
    /// done) on backends without `NOTIFY`.
    pub async fn notify_flushed(&self, keys: &[(Key, Option<i64>)]) -> Result<usize> {
        if !self.supports_notify() || keys.is_empty() {
            return Ok(0);
        }
        let (payloads, skipped) = payloads(
            &self.config().instance,
            keys.iter().map(|(k, v)| (&**k, *v)),
        );
        if skipped > 0 {
            tracing::warn!(
                skipped,
                "writebehind: keys too long to announce; other instances see them change only after their clean TTL"
            );
        }
        self.send_notifications(payloads).await
    }

    /// Announces an explicit invalidation of `keys` and of every key under
    /// `prefixes`, in one statement. Returns the number of notifications
    /// sent; 0 (and nothing done) on backends without `NOTIFY`.
    pub async fn notify_invalidated(&self, keys: &[Key], prefixes: &[&str]) -> Result<usize> {
        if !self.supports_notify() || (keys.is_empty() && prefixes.is_empty()) {
            return Ok(0);
        }
        let keys: Vec<&str> = keys.iter().map(|k| &**k).collect();
        let (payloads, skipped) = invalidation_payloads(&self.config().instance, &keys, prefixes);
        if skipped > 0 {
            tracing::warn!(
                skipped,
                "writebehind: keys or prefixes too long to announce; other instances drop them only after their clean TTL"
            );
        }
        self.send_notifications(payloads).await
    }

    #[cfg(feature = "postgres")]
    #[allow(irrefutable_let_patterns)] // with postgres the only backend
    async fn send_notifications(&self, payloads: Vec<String>) -> Result<usize> {
        let crate::db::Pool::Pg(pool) = self.pool() else {
            return Ok(0);
        };
        let n = payloads.len();
        if n == 0 {
            return Ok(0);
        }
        sqlx::query("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p")
            .bind(self.notify_channel())
            .bind(payloads)
            .execute(pool)
            .await
            .map_err(crate::error::Error::sql("notify: pg_notify"))?;
        Ok(n)
    }

    #[cfg(not(feature = "postgres"))]
    async fn send_notifications(&self, payloads: Vec<String>) -> Result<usize> {
        let _ = payloads;
        Ok(0)
    }

    /// Starts a background task (on the current tokio runtime) that listens
    /// on this table's channel over a connection of its own, reconnecting
    /// with backoff after errors, and calls `on_keys` with the keys every
    /// other instance flushes. `None` on backends without `NOTIFY`.
    pub fn listen(&self, on_keys: OnKeys) -> Option<Listener> {
        self.listen_all(Arc::new(move |a| {
            if let Announcement::Flushed(keys) = a {
                on_keys(&keys);
            }
        }))
    }

    /// [`listen`](Self::listen) to everything other instances announce:
    /// flushes and explicit invalidations.
    pub fn listen_all(&self, on: OnAnnouncement) -> Option<Listener> {
        if !self.supports_notify() {
            return None;
        }
        self.spawn_listener(on)
    }

    #[cfg(feature = "postgres")]
    #[allow(irrefutable_let_patterns)] // with postgres the only backend
    fn spawn_listener(&self, on_keys: OnAnnouncement) -> Option<Listener> {
        let crate::db::Pool::Pg(pool) = self.pool() else {
            return None;
        };
        // A pool of its own: the listener holds its connection for good and
        // must not take one from the flusher.
        let own = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .max_lifetime(None)
            .idle_timeout(None)
            .acquire_timeout(self.config().acquire_timeout)
            .connect_lazy_with((*pool.connect_options()).clone());
        let (tx, rx) = watch::channel(ListenerStatus::default());
        let task = tokio::spawn(listen_loop(
            own,
            self.notify_channel(),
            self.config().instance.clone(),
            on_keys,
            tx,
        ));
        Some(Listener { task, status: rx })
    }

    #[cfg(not(feature = "postgres"))]
    fn spawn_listener(&self, on_keys: OnAnnouncement) -> Option<Listener> {
        let _ = on_keys;
        None
    }
}

#[cfg(feature = "postgres")]
async fn listen_loop(
    pool: sqlx::PgPool,
    channel: String,
    instance: String,
    on_keys: OnAnnouncement,
    status: watch::Sender<ListenerStatus>,
) {
    use std::time::Duration;
    let mut backoff = Duration::from_millis(100);
    loop {
        let result = async {
            let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
            listener.ignore_pool_close_event(true);
            listener.listen(&channel).await?;
            status.send_modify(|s| {
                s.attempts += 1;
                s.listening = true;
            });
            tracing::debug!(channel = %channel, "writebehind: listening for other instances' flushes");
            loop {
                match listener.try_recv().await? {
                    Some(n) => {
                        if let Some((from, announced)) = decode_announcement(n.payload()) {
                            if from != instance {
                                on_keys(announced);
                            }
                        }
                    }
                    None => {
                        status.send_modify(|s| s.gaps += 1);
                        tracing::warn!(
                            channel = %channel,
                            "writebehind: invalidation listener lost its connection; flushes announced meanwhile are missed (clean TTL bounds staleness)"
                        );
                    }
                }
            }
            #[allow(unreachable_code)]
            Ok::<(), sqlx::Error>(())
        }
        .await;
        if let Err(e) = result {
            let was_listening = status.borrow().listening;
            status.send_modify(|s| {
                s.attempts += u64::from(!was_listening);
                s.listening = false;
                s.gaps += u64::from(was_listening);
            });
            tracing::warn!(
                channel = %channel,
                error = %e,
                retry_in = ?backoff,
                "writebehind: invalidation listener failed; reconnecting"
            );
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        } else {
            backoff = Duration::from_millis(100);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn channel_names_fit_postgres() {
        assert_eq!(channel("counters"), "wb_counters");
        let long = "t".repeat(63);
        let c = channel(&long);
        assert_eq!(c.len(), 63);
        assert!(c.starts_with("wb_ttt"));
        assert_ne!(c, channel(&"t".repeat(62)));
    }

    #[test]
    fn payloads_are_chunked_under_the_limit_and_round_trip() {
        let keys: Vec<(String, Option<i64>)> = (0..2_000i64)
            .map(|i| {
                (
                    format!("key:\"{i}\""),
                    (i % 3 != 0).then_some(i * 1_000_003),
                )
            })
            .collect();
        let (ps, skipped) = payloads("inst-1", keys.iter().map(|(k, v)| (k.as_str(), *v)));
        assert_eq!(skipped, 0);
        assert!(ps.len() > 1);
        let mut back = Vec::new();
        for p in &ps {
            assert!(p.len() <= MAX_PAYLOAD, "{}", p.len());
            let (from, k) = decode(p).unwrap();
            assert_eq!(from, "inst-1");
            back.extend(k);
        }
        assert_eq!(back, keys);
        // Chunks are full: no more payloads than the bytes need.
        let bytes: usize = ps.iter().map(String::len).sum();
        assert_eq!(ps.len(), bytes.div_ceil(MAX_PAYLOAD - 40).max(1));
    }

    #[test]
    fn invalidations_are_chunked_round_trip_and_are_not_read_as_flushes() {
        let keys: Vec<String> = (0..1_500).map(|i| format!("user:{i}")).collect();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let big = "p".repeat(MAX_PAYLOAD);
        let (ps, skipped) = invalidation_payloads("inst-1", &refs, &["team:4:", &big]);
        assert_eq!(skipped, 1);
        assert!(ps.len() > 1);
        let (mut got_keys, mut got_prefixes) = (Vec::new(), Vec::new());
        for p in &ps {
            assert!(p.len() <= MAX_PAYLOAD, "{}", p.len());
            assert_eq!(decode(p).map(|d| d.1.len()), Some(0), "{p}");
            match decode_announcement(p).unwrap() {
                (from, Announcement::Invalidated { keys, prefixes }) => {
                    assert_eq!(from, "inst-1");
                    got_keys.extend(keys);
                    got_prefixes.extend(prefixes);
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(got_keys, keys);
        assert_eq!(got_prefixes, vec!["team:4:".to_owned()]);
        // A flush payload is still a flush.
        let (ps, _) = payloads("i", [("a", Some(1))]);
        assert_eq!(
            decode_announcement(&ps[0]),
            Some((
                "i".to_owned(),
                Announcement::Flushed(vec![("a".to_owned(), Some(1))])
            ))
        );
        assert_eq!(decode_announcement(r#"{"i":"x"}"#), None);
    }

    #[test]
    fn a_key_too_long_is_skipped_not_sent() {
        let big = "x".repeat(MAX_PAYLOAD);
        let (ps, skipped) = payloads("i", [("a", Some(1)), (big.as_str(), None), ("b", None)]);
        assert_eq!(skipped, 1);
        assert_eq!(ps.len(), 1);
        assert_eq!(
            decode(&ps[0]).unwrap().1,
            vec![("a".to_owned(), Some(1)), ("b".to_owned(), None)]
        );
        assert_eq!(decode("not json"), None);
        assert_eq!(decode(r#"{"i":"x","k":["a"],"v":[1,2]}"#), None);
        assert_eq!(
            decode(r#"{"i":"x","k":["a"]}"#),
            Some(("x".to_owned(), vec![("a".to_owned(), None)]))
        );
    }
}
