//! A typed record table: `Product { name, price, stock }` in its own columns, with the cache's
//! version column and a conflict policy.
//!
//! The cache writes products; then "another service" changes a row in the database behind the
//! cache's back, and the cache's next write of that row, derived from the version it had seen,
//! is reported as a conflict: with `ConflictPolicy::KeepDatabase` the database's row wins, the
//! hook sees it, and the cache serves the database's row afterwards.
//!
//! ```text
//! cargo run --example products
//! cargo run --example products -- --db postgres://postgres@127.0.0.1:5432/test
//! ```

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sqlx::Row;
use writebehind::{
    Column, Conflict, ConflictPolicy, Durability, Record, SqlType, SqlValue, WriteBehind,
};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Product {
    name: String,
    price: f64,
    stock: i64,
}

impl Record for Product {
    fn columns() -> Vec<Column> {
        [
            ("name", SqlType::Text),
            ("price", SqlType::Double),
            ("stock", SqlType::BigInt),
        ]
        .into_iter()
        .map(|(name, ty)| Column::new(name, ty, false).expect("valid column name"))
        .collect()
    }

    fn to_row(&self) -> Vec<SqlValue> {
        vec![
            SqlValue::Text(self.name.clone()),
            SqlValue::Float(self.price),
            SqlValue::Int(self.stock),
        ]
    }

    fn from_row(row: Vec<SqlValue>) -> Result<Self, String> {
        match <[SqlValue; 3]>::try_from(row) {
            Ok([SqlValue::Text(name), SqlValue::Float(price), SqlValue::Int(stock)]) => {
                Ok(Product { name, price, stock })
            }
            Ok(other) => Err(format!("unexpected product columns {other:?}")),
            Err(row) => Err(format!("expected 3 product columns, got {}", row.len())),
        }
    }
}

const TABLE: &str = "products_example";

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut db = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--db" => db = Some(args.next().ok_or("--db needs a URL")?),
            "-h" | "--help" => {
                println!("usage: products [--db URL]   (default: an SQLite file in a temp dir)");
                return Ok(());
            }
            other => return Err(format!("unknown argument {other:?} (try --help)").into()),
        }
    }
    let scratch = std::env::temp_dir().join(format!("writebehind-products-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)?;
    let url =
        db.unwrap_or_else(|| format!("sqlite://{}?mode=rwc", scratch.join("shop.db").display()));
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&url).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE IF EXISTS {TABLE}")))
        .execute(&pool)
        .await?;

    let seen: Arc<Mutex<Vec<Conflict>>> = Arc::default();
    let hook = seen.clone();
    let cache = WriteBehind::<String, Product>::builder(scratch.join("wal"))
        .database(url.clone())
        .table(TABLE)
        .create_tables(true)
        .durability(Durability::Fsync)
        .conflict_policy(ConflictPolicy::KeepDatabase)
        .on_conflict(move |c| {
            if let Ok(mut v) = hook.lock() {
                v.push(c.clone());
            }
        })
        .open()
        .await?;

    let lamp = Product {
        name: "Desk lamp".into(),
        price: 24.5,
        stock: 10,
    };
    cache.put("sku-1", &lamp).await?;
    cache
        .put(
            "sku-2",
            &Product {
                name: "Chair".into(),
                price: 80.0,
                stock: 4,
            },
        )
        .await?;
    // Read-modify-write under the key's lock: sell one chair.
    cache
        .update("sku-2", |p| {
            p.map(|p| Product {
                stock: p.stock - 1,
                ..p
            })
        })
        .await?;
    cache.flush().await?;
    println!("after the first flush:");
    print_rows(&pool, &url).await?;

    // Another service sells 7 lamps directly in the database (and bumps the version, as every
    // writer of a versioned table must).
    let key = if url.starts_with("mysql") {
        "`key`"
    } else {
        "\"key\""
    };
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE {TABLE} SET stock = stock - 7, version = version + 1 WHERE {key} = 'sku-1'"
    )))
    .execute(&pool)
    .await?;

    // The cache still believes version 1: this price change is derived from a stale row.
    cache
        .put(
            "sku-1",
            &Product {
                price: 19.9,
                ..lamp.clone()
            },
        )
        .await?;
    cache.flush().await?;

    let conflicts = seen.lock().map(|v| v.clone()).unwrap_or_default();
    for c in &conflicts {
        println!(
            "conflict on {}: we expected {:?}, the database had version {:?}; resolution: {}",
            c.key,
            c.expected,
            c.database.as_ref().map(|d| d.1),
            c.resolution.label()
        );
    }
    println!("after the conflicting write:");
    print_rows(&pool, &url).await?;
    let served = cache.get("sku-1").await?;
    println!("the cache now serves sku-1 = {served:?}");
    let stats = cache.stats();
    cache.close().await?;

    let expect = Product { stock: 3, ..lamp };
    if conflicts.len() != 1 || stats.conflicts != 1 || served.as_ref() != Some(&expect) {
        return Err(format!(
            "expected exactly one conflict and sku-1 = {expect:?}; got {} conflicts, {served:?}",
            conflicts.len()
        )
        .into());
    }
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE IF EXISTS {TABLE}")))
        .execute(&pool)
        .await?;
    pool.close().await;
    let _ = std::fs::remove_dir_all(&scratch);
    println!("OK: the conflict was reported and the database's row was kept");
    Ok(())
}

async fn print_rows(pool: &sqlx::AnyPool, url: &str) -> Result<(), sqlx::Error> {
    // sqlx reports a MySQL LONGTEXT as a BLOB; a bounded CHAR decodes as text.
    let name = if url.starts_with("mysql") {
        "CAST(name AS CHAR(255))"
    } else {
        "name"
    };
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {name} AS name, price, stock, version FROM {TABLE} ORDER BY name"
    )))
    .fetch_all(pool)
    .await?;
    for r in rows {
        println!(
            "  {:<10} price {:>6.2}  stock {:>3}  version {}",
            r.try_get::<String, _>("name")?,
            r.try_get::<f64, _>("price")?,
            r.try_get::<i64, _>("stock")?,
            r.try_get::<i64, _>("version")?
        );
    }
    Ok(())
}
