//! Replication to NATS JetStream against a real server: `WB_NATS_URL`
//! (default `nats://127.0.0.1:4222`, which `scripts/test` starts), plus
//! private `nats-server` processes the tests start and stop themselves.
//! Each test uses a stream of its own.
#![allow(clippy::unwrap_used)]
#![cfg(feature = "nats")]

use std::path::Path;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use writebehind::{Backpressure, Durability, Error, WriteBehind};

mod common {
    pub mod nats;
}
use common::nats::{nats_url, unique, NatsServer};

type Cache = WriteBehind<String, i64>;

/// Each test's stream takes the subjects `<stream>.>`: streams may not overlap.
fn builder(dir: &Path, url: &str, stream: &str, id: &str) -> writebehind::Builder<String, i64> {
    Cache::builder(dir)
        .replicate(
            writebehind::nats::JetStream::new(url)
                .stream(stream)
                .subject_prefix(stream),
        )
        .instance_id(id)
}

async fn stream_messages(url: &str, stream: &str) -> u64 {
    let client = async_nats::connect(url).await.unwrap();
    let js = jetstream::new(client);
    js.get_stream(stream)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages
}

async fn until(what: &str, bound: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + bound;
    while !f() {
        assert!(Instant::now() < end, "{what}: not within {bound:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_writes_rebuild_an_empty_directory() {
    let url = nats_url().await;
    let (stream, id) = (unique("RB"), unique("inst"));
    let a = tempfile::tempdir().unwrap();
    let cache = builder(a.path(), &url, &stream, &id)
        .durability(Durability::Replicated)
        .open()
        .await
        .unwrap();
    for i in 0..200i64 {
        cache.add(&format!("k{}", i % 7), i).await.unwrap();
    }
    let s = cache.stats();
    assert_eq!((s.replicated_lsn, s.replication_lag_lsns), (200, 0));
    assert!(s.replication_messages >= 1, "{s:?}");
    cache.close().await.unwrap();

    // The machine is gone: a new, empty directory with the same identity.
    let b = tempfile::tempdir().unwrap();
    let cache = builder(b.path(), &url, &stream, &id).open().await.unwrap();
    // The close checkpoint may have reached the object store (and the
    // records below it gone from the stream): together they cover all 200.
    let r = cache.recovery();
    assert_eq!(
        r.rebuilt_checkpoint.unwrap_or(0) + r.rebuilt_records.unwrap(),
        200,
        "{r:?}"
    );
    for k in 0..7 {
        let want: i64 = (0..200).filter(|i| i % 7 == k).sum();
        assert_eq!(cache.get(&format!("k{k}")).await.unwrap(), Some(want));
    }
    assert_eq!(
        std::fs::read_to_string(b.path().join("instance.id")).unwrap(),
        id
    );
    cache.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_down_at_open_fails_replicated_writes_only() {
    // Nothing listens on this port.
    let url = "nats://127.0.0.1:9";
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::builder(dir.path())
        .replicate(writebehind::nats::JetStream::new(url))
        .backpressure(Backpressure::Wait(Duration::from_millis(300)))
        .open()
        .await
        .unwrap();
    for mode in [
        Durability::Fsync,
        Durability::None,
        Durability::Buffered {
            interval: Duration::from_millis(10),
        },
    ] {
        cache.add_with("k", 1, mode).await.unwrap();
    }
    let started = Instant::now();
    let e = cache
        .add_with("k", 1, Durability::Replicated)
        .await
        .unwrap_err();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    let text = e.to_string();
    assert!(
        matches!(
            &e,
            Error::Wal(writebehind_wal::Error::ReplicaTimeout {
                lsn: 4,
                replicated: 0,
                ..
            })
        ),
        "{e:?}"
    );
    assert!(
        text.contains("NATS") && text.contains("127.0.0.1:9"),
        "{text}"
    );
    let s = cache.stats();
    assert!(s.replication_failures >= 1, "{s:?}");
    assert_eq!((s.writes, s.replication_lag_lsns), (3, 4));
    assert_eq!(cache.get("k").await.unwrap(), Some(4));
    // Close says what was not replicated; the writes stay in the WAL.
    let e = cache.close().await.unwrap_err();
    assert!(e.to_string().contains("not replicated"), "{e}");

    // An empty directory with an explicit id cannot start without the stream.
    let empty = tempfile::tempdir().unwrap();
    let e = Cache::builder(empty.path())
        .replicate(writebehind::nats::JetStream::new(url))
        .instance_id("lost-one")
        .open()
        .await
        .err()
        .unwrap();
    assert!(matches!(e, Error::Replication { .. }), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_down_mid_run_then_back_catches_up() {
    let mut server = NatsServer::start().await;
    let url = server.url();
    let (stream, id) = (unique("MID"), unique("inst"));
    let dir = tempfile::tempdir().unwrap();
    let cache = builder(dir.path(), &url, &stream, &id)
        .backpressure(Backpressure::Wait(Duration::from_millis(500)))
        .open()
        .await
        .unwrap();
    cache
        .add_with("k", 1, Durability::Replicated)
        .await
        .unwrap();
    server.stop();
    // Local modes carry on; Replicated ones time out naming NATS.
    for _ in 0..50 {
        cache.add_with("k", 1, Durability::Fsync).await.unwrap();
    }
    let e = cache
        .add_with("k", 1, Durability::Replicated)
        .await
        .unwrap_err();
    assert!(
        matches!(
            &e,
            Error::Wal(writebehind_wal::Error::ReplicaTimeout { replicated: 1, .. })
        ),
        "{e:?}"
    );
    let failures = cache.stats().replication_failures;
    assert!(failures >= 1);
    // The task backs off: a second later only a few more attempts were made.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let more = cache.stats().replication_failures - failures;
    assert!(more <= 5, "{more} reconnection attempts within a second");
    server.restart().await;
    let c = cache.clone();
    until("catch up", Duration::from_secs(20), move || {
        let s = c.stats();
        s.replicated_lsn == s.last_lsn
    })
    .await;
    cache
        .add_with("k", 1, Durability::Replicated)
        .await
        .unwrap();
    assert_eq!(cache.stats().replicated_lsn, 53);
    cache.close().await.unwrap();

    // Everything, the writes made while NATS was down included, is in the stream.
    let b = tempfile::tempdir().unwrap();
    let copy = builder(b.path(), &url, &stream, &id).open().await.unwrap();
    assert_eq!(copy.get("k").await.unwrap(), Some(53));
    copy.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_or_a_corrupt_message_in_the_stream_is_a_loud_error() {
    use writebehind_wal::replica::encode_frames;
    use writebehind_wal::Frame;
    let url = nats_url().await;
    let stream = unique("GAP");
    let client = async_nats::connect(url.as_str()).await.unwrap();
    let js = jetstream::new(client);
    js.create_stream(jetstream::stream::Config {
        name: stream.clone(),
        subjects: vec![format!("{stream}.>")],
        ..Default::default()
    })
    .await
    .unwrap();
    // Well-formed records of this crate: an add of 1 to "k".
    let op = |lsn| Frame {
        lsn,
        kind: 1,
        payload: vec![
            0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, b'k', 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            0,
        ],
    };
    let publish = |subject: String, records: Vec<Frame>| {
        let js = js.clone();
        async move {
            js.publish(subject, encode_frames(&records).into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    };
    publish(format!("{stream}.gappy.wal"), vec![op(1), op(2), op(3)]).await;
    publish(format!("{stream}.gappy.wal"), vec![op(5), op(6)]).await;
    let dir = tempfile::tempdir().unwrap();
    let e = builder(dir.path(), &url, &stream, "gappy")
        .open()
        .await
        .err()
        .unwrap();
    assert!(
        matches!(
            e,
            Error::Wal(writebehind_wal::Error::ReplicaGap {
                expected: 4,
                found: 5
            })
        ),
        "{e:?}"
    );
    assert!(!dir.path().join("00000000000000000001.wal").exists());

    // The same records, whole: the rebuild takes them.
    publish(format!("{stream}.whole.wal"), vec![op(1), op(2), op(3)]).await;
    publish(format!("{stream}.whole.wal"), vec![op(4)]).await;
    let whole = tempfile::tempdir().unwrap();
    let cache = builder(whole.path(), &url, &stream, "whole")
        .open()
        .await
        .unwrap();
    assert_eq!(cache.get("k").await.unwrap(), Some(4));
    cache.close().await.unwrap();

    // One flipped bit in a message.
    let mut bad = encode_frames(&[op(1), op(2)]);
    let at = bad.len() - 3;
    bad[at] ^= 0x10;
    js.publish(format!("{stream}.flipped.wal"), bad.into())
        .await
        .unwrap()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let e = builder(dir.path(), &url, &stream, "flipped")
        .open()
        .await
        .err()
        .unwrap();
    assert!(
        matches!(e, Error::Wal(writebehind_wal::Error::ReplicaData { .. })),
        "{e:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_publish_is_a_duplicate_jetstream_drops() {
    let url = nats_url().await;
    let (stream, id) = (unique("DUP"), unique("inst"));
    let dir = tempfile::tempdir().unwrap();
    let cache = builder(dir.path(), &url, &stream, &id)
        .durability(Durability::Replicated)
        .open()
        .await
        .unwrap();
    for _ in 0..10 {
        cache.add("k", 1).await.unwrap();
    }
    // Not closed: no close checkpoint trims the stream under the test.
    drop(cache);
    let client = async_nats::connect(url.as_str()).await.unwrap();
    let js = jetstream::new(client);
    let s = js.get_stream(&stream).await.unwrap();
    let before = s.get_info().await.unwrap().state.messages;
    let first = s
        .raw_message_builder()
        .sequence(1)
        .next_by_subject(format!("{stream}.{id}.wal"))
        .send()
        .await
        .unwrap();
    // The owner's epoch is in the id and a header.
    assert_eq!(first.headers.get("Wb-Epoch").unwrap().as_str(), "1");
    // The same message again, as the task sends it after a lost ack.
    let again = js
        .send_publish(
            format!("{stream}.{id}.wal"),
            jetstream::message::PublishMessage::build()
                .payload(first.payload.clone())
                .message_id(format!("{id}:1:1"))
                .header("Wb-Epoch", "1"),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(s.get_info().await.unwrap().state.messages, before);
    // Past the duplicate window a repeat lands: the rebuild skips the
    // LSNs it already has instead of applying them twice.
    js.send_publish(
        format!("{stream}.{id}.wal"),
        jetstream::message::PublishMessage::build()
            .payload(first.payload.clone())
            .header("Wb-Epoch", "1"),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let b = tempfile::tempdir().unwrap();
    let copy = builder(b.path(), &url, &stream, &id).open().await.unwrap();
    assert_eq!(copy.recovery().rebuilt_records, Some(10));
    assert_eq!(copy.get("k").await.unwrap(), Some(10));
    copy.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_is_trimmed_after_flushes() {
    let url = nats_url().await;
    let (stream, id) = (unique("TRIM"), unique("inst"));
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("db.sqlite").display());
    let wal = dir.path().join("wal");
    let cache = builder(&wal, &url, &stream, &id)
        .durability(Durability::Replicated)
        .database(&db)
        .create_tables(true)
        .flush_interval(Duration::from_millis(50))
        .open()
        .await
        .unwrap();
    for round in 0..20 {
        for i in 0..50 {
            cache.add(&format!("k{}", i % 5), 1).await.unwrap();
        }
        cache.flush().await.unwrap();
        if round == 0 {
            assert!(stream_messages(&url, &stream).await >= 1);
        }
    }
    let c = cache.clone();
    until("a purge", Duration::from_secs(10), move || {
        c.stats().replication_purges >= 1
    })
    .await;
    let s = cache.stats();
    assert!(s.replication_messages >= 40, "{s:?}");
    // 1000 adds in ≥ 40 messages; what is left is the tail since the last
    // flush plus the floor record.
    let left = stream_messages(&url, &stream).await;
    assert!(left < s.replication_messages / 2, "{left} of {s:?}");
    cache.close().await.unwrap();

    // A rebuild from the trimmed stream against the same database: nothing
    // is dirty, and the database holds every add once.
    let b = tempfile::tempdir().unwrap();
    let copy = builder(b.path(), &url, &stream, &id)
        .database(&db)
        .open()
        .await
        .unwrap();
    copy.flush().await.unwrap();
    assert_eq!(copy.stats().dirty_entries, 0);
    for k in 0..5 {
        assert_eq!(copy.get(&format!("k{k}")).await.unwrap(), Some(200));
    }
    copy.close().await.unwrap();
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_stays_bounded_during_a_database_outage() {
    let url = nats_url().await;
    let (stream, id) = (unique("OUT"), unique("inst"));
    let dir = tempfile::tempdir().unwrap();
    // A database that is never there.
    let cache = builder(dir.path(), &url, &stream, &id)
        .database("postgres://postgres@127.0.0.1:9/test")
        .durability(Durability::Replicated)
        .segment_size(64 << 10)
        .checkpoint_bytes(256 << 10)
        .open()
        .await
        .unwrap();
    for i in 0..20_000i64 {
        cache.add(&format!("k{}", i % 10), 1).await.unwrap();
    }
    let c = cache.clone();
    until(
        "a checkpoint in the stream",
        Duration::from_secs(20),
        move || {
            let s = c.stats();
            s.replication_checkpoints >= 1 && s.replication_purges >= 1
        },
    )
    .await;
    let s = cache.stats();
    let left = stream_messages(&url, &stream).await;
    assert!(
        left < s.replication_messages / 2,
        "{left} messages left of {}",
        s.replication_messages
    );
    drop(cache);

    let b = tempfile::tempdir().unwrap();
    let copy = builder(b.path(), &url, &stream, &id).open().await.unwrap();
    assert!(copy.recovery().rebuilt_checkpoint.is_some());
    for k in 0..10 {
        assert_eq!(copy.get(&format!("k{k}")).await.unwrap(), Some(2000));
    }
    copy.close().await.unwrap();
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_nats_and_the_database_were_both_down_the_checkpoint_fills_the_stream() {
    let mut server = NatsServer::start().await;
    let url = server.url();
    let (stream, id) = (unique("BOTH"), unique("inst"));
    let dir = tempfile::tempdir().unwrap();
    let cache = builder(dir.path(), &url, &stream, &id)
        .database("postgres://postgres@127.0.0.1:9/test")
        .segment_size(64 << 10)
        .checkpoint_bytes(256 << 10)
        .open()
        .await
        .unwrap();
    cache.add("k0", 1).await.unwrap();
    let c = cache.clone();
    until("first ack", Duration::from_secs(10), move || {
        c.stats().replicated_lsn == 1
    })
    .await;
    server.stop();
    // Local checkpoints cut the WAL below what NATS has seen.
    for i in 1..20_000i64 {
        cache.add(&format!("k{}", i % 10), 1).await.unwrap();
    }
    cache.checkpoint().unwrap();
    assert!(cache.stats().checkpoints >= 2);
    server.restart().await;
    let c = cache.clone();
    until("catch up", Duration::from_secs(30), move || {
        let s = c.stats();
        s.replicated_lsn == s.last_lsn
    })
    .await;
    assert!(cache.stats().replication_checkpoints >= 1);
    drop(cache);

    let b = tempfile::tempdir().unwrap();
    let copy = builder(b.path(), &url, &stream, &id).open().await.unwrap();
    assert!(copy.recovery().rebuilt_checkpoint.is_some());
    for k in 0..10 {
        assert_eq!(copy.get(&format!("k{k}")).await.unwrap(), Some(2000));
    }
    copy.close().await.unwrap();
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_larger_than_a_message_goes_to_the_object_store() {
    let url = nats_url().await;
    let (stream, id) = (unique("BIG"), unique("inst"));
    let dir = tempfile::tempdir().unwrap();
    let cache = builder(dir.path(), &url, &stream, &id)
        .database("postgres://postgres@127.0.0.1:9/test")
        .durability(Durability::None)
        .open()
        .await
        .unwrap();
    // 12 000 keys of 80 bytes: the checkpoint is more than a message (1 MiB).
    let key = |i: i64| format!("{:0>80}", i % 12_000);
    for i in 0..20_000i64 {
        cache.add(&key(i), 1).await.unwrap();
    }
    let c = cache.clone();
    until("replicated", Duration::from_secs(30), move || {
        let s = c.stats();
        s.replicated_lsn == s.last_lsn
    })
    .await;
    cache.checkpoint().unwrap();
    let c = cache.clone();
    until(
        "the checkpoint stored",
        Duration::from_secs(30),
        move || {
            let s = c.stats();
            s.replication_checkpoints >= 1 && s.replication_purges >= 1
        },
    )
    .await;
    let client = async_nats::connect(url.as_str()).await.unwrap();
    let js = jetstream::new(client);
    let store = js
        .get_object_store(format!("{stream}-checkpoints"))
        .await
        .unwrap();
    // One object per owner epoch: this owner claimed epoch 1.
    assert!(store.info(format!("{id}.1")).await.unwrap().size > 1 << 20);
    drop(cache);

    let b = tempfile::tempdir().unwrap();
    let copy = builder(b.path(), &url, &stream, &id).open().await.unwrap();
    assert!(copy.recovery().rebuilt_checkpoint.is_some());
    assert_eq!(copy.recovery().rebuilt_records, Some(0));
    assert_eq!(copy.stats().dirty_entries, 12_000);
    for i in [0, 1, 7_999, 8_000, 11_999] {
        let want = if i < 8_000 { 2 } else { 1 };
        assert_eq!(copy.get(&key(i)).await.unwrap(), Some(want), "key {i}");
    }
    copy.close().await.unwrap();
}
