//! The replica of one instance against a real NATS server (`WB_NATS_URL`,
//! default `nats://127.0.0.1:4222`, which `scripts/test` starts), under a
//! bare WAL: claims, publishing, reading back, fencing.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::Duration;

use writebehind_nats::{JetStream, ReplicaError};
use writebehind_wal::rebuild::rebuild;
use writebehind_wal::{
    is_empty_log, Durability, Error, ReadBack, Rebuilt, Replica, ReplicatedLog, StdIo, Wal,
    WalBuilder,
};

const PATIENCE: Duration = Duration::from_secs(10);

fn settings(name: &str) -> JetStream {
    let url = std::env::var("WB_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    JetStream::new(url).stream(name).subject_prefix(name)
}

/// A name no other test run uses.
fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}-{}-{nanos:08x}", std::process::id())
}

/// What a cache does at open: take the instance over, rebuild an empty
/// directory from the stream, open the WAL with the replica as its sink.
async fn open(dir: &Path, log: &JetStream, instance: &str) -> (Arc<Wal>, Arc<dyn Replica>) {
    let replica = log.replica(instance).unwrap();
    let history = replica.take_over(PATIENCE).await.unwrap();
    if is_empty_log(&StdIo, dir).unwrap() {
        rebuild(&StdIo, dir, history.as_ref()).unwrap();
    }
    let (wal, _) = WalBuilder::new(dir)
        .durability(Durability::Replicated)
        .replica(replica.clone(), replica.watermark().clone(), PATIENCE)
        .open()
        .unwrap();
    let wal = Arc::new(wal);
    let log: Weak<dyn ReadBack> = Arc::downgrade(&wal) as Weak<Wal>;
    replica.clone().start(log, Box::new(|| {})).unwrap();
    (wal, replica)
}

fn payload(i: u32) -> Vec<u8> {
    format!("record {i}").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_records_rebuild_an_empty_directory() {
    let name = unique("NATSREBUILD");
    let log = settings(&name);
    let instance = unique("rebuild");
    let first = tempfile::tempdir().unwrap();
    let (wal, replica) = open(first.path(), &log, &instance).await;
    assert_eq!(replica.epoch(), Some(1));
    for i in 1..=20 {
        assert_eq!(
            wal.append(1, &payload(i)).unwrap().await.unwrap(),
            u64::from(i)
        );
    }
    assert_eq!(replica.watermark().replicated(), 20);
    replica.stop(PATIENCE).await.unwrap();
    let counts = replica.counts(wal.last_lsn());
    assert_eq!(counts.replicated_lsn, 20);
    assert_eq!(counts.lag, Duration::ZERO);
    assert_eq!(counts.failures, 0);

    // The same instance elsewhere, from an empty directory.
    let second = tempfile::tempdir().unwrap();
    let again = log.replica(&instance).unwrap();
    let history = again.take_over(PATIENCE).await.unwrap();
    assert_eq!(again.epoch(), Some(2));
    assert_eq!(history.last_lsn(), 20);
    assert_eq!(
        rebuild(&StdIo, second.path(), history.as_ref()).unwrap(),
        Rebuilt {
            checkpoint: None,
            records: 20
        }
    );
    let (rebuilt, _) = WalBuilder::new(second.path()).open().unwrap();
    let got: Vec<_> = rebuilt
        .replay(1)
        .unwrap()
        .map(|r| r.unwrap().payload)
        .collect();
    assert_eq!(got, (1..=20).map(payload).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_claim_fences_the_owner_before_it_acknowledges_anything() {
    let name = unique("NATSFENCE");
    let log = settings(&name);
    let instance = unique("fence");
    let dir = tempfile::tempdir().unwrap();
    let (wal, replica) = open(dir.path(), &log, &instance).await;
    assert_eq!(wal.append(1, &payload(1)).unwrap().await.unwrap(), 1);
    assert!(replica.fenced().is_none());

    // A second owner claims the instance while the first still runs.
    let newer = log.replica(&instance).unwrap();
    let history = newer.take_over(PATIENCE).await.unwrap();
    assert_eq!(newer.epoch(), Some(2));
    assert_eq!(history.last_lsn(), 1);

    // The first owner's next record is stored, but never acknowledged.
    let e = wal.append(1, &payload(2)).unwrap().await.unwrap_err();
    let fenced = "instance {instance:?} is owned by a newer owner (owner epoch 2; this cache claimed 1): \
         this cache is fenced, flushes nothing more and refuses writes; its unflushed writes stay in its WAL";
    let fenced = fenced.replace("{instance:?}", &format!("{instance:?}"));
    assert!(
        matches!(&e, Error::ReplicaStopped { lsn: 2, reason } if *reason == fenced),
        "{e:?}"
    );
    assert!(
        matches!(
            replica.fenced(),
            Some(ReplicaError::Fenced { ours: 1, owner_epoch: 2, instance: i }) if i == instance
        ),
        "{:?}",
        replica.fenced()
    );
    assert_eq!(replica.watermark().replicated(), 1);
    assert!(replica.stop(PATIENCE).await.is_err());

    // What the newer owner reads back leaves the fenced record out.
    let reread = log.replica(&instance).unwrap();
    assert_eq!(reread.take_over(PATIENCE).await.unwrap().last_lsn(), 1);
}
