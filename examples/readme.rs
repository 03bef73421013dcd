//! The README example: counters keyed by text, flushed to SQLite in the background.

use writebehind::{Durability, WriteBehind};

#[tokio::main]
async fn main() -> writebehind::Result<()> {
    // Counters keyed by text, flushed to an SQLite file in the background.
    let cache = WriteBehind::<String, i64>::builder("./data/readme-wal")
        .database("sqlite://./data/readme.db")
        .create_tables(true)
        .durability(Durability::Fsync)
        .open()
        .await?;

    // Acknowledged once the WAL has it on disk; the database sees one row per key.
    for _ in 0..1_000 {
        cache.add("page:home", 1).await?;
    }
    cache.add("page:about", 5).await?;
    assert_eq!(cache.get("page:home").await?, Some(1_000));

    cache.flush().await?; // barrier: everything above is in SQLite now
    println!("{:?}", cache.stats());
    cache.close().await // flushes the rest and reports every error
}
