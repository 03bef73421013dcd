//! The thin per-backend layer: pools, transactions, binding [`Arg`]s and
//! decoding rows into [`SqlValue`](crate::schema::SqlValue)s. Everything above it is backend-neutral
//! except the SQL text, which `sql.rs` renders.
//!
//! This file: pools, transactions and connections. `query.rs` runs
//! statements on a connection: binding and decoding.

mod query;

use std::str::FromStr;

use crate::config::WriterConfig;
use crate::error::{Error, Result};
use crate::ident::Backend;

/// A typed bind parameter. Arrays are for PostgreSQL `UNNEST`/`ANY` only.
#[derive(Clone, Debug)]
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(crate) enum Arg {
    Int(Option<i64>),
    Float(Option<f64>),
    Text(Option<String>),
    Bytes(Option<Vec<u8>>),
    Bool(Option<bool>),
    IntArr(Vec<Option<i64>>),
    FloatArr(Vec<Option<f64>>),
    TextArr(Vec<Option<String>>),
    BytesArr(Vec<Option<Vec<u8>>>),
    BoolArr(Vec<Option<bool>>),
}

/// A connection pool of the configured backend.
#[derive(Clone, Debug)]
pub(crate) enum Pool {
    #[cfg(not(any(feature = "sqlite", feature = "postgres", feature = "mysql")))]
    None(std::convert::Infallible),
    #[cfg(feature = "sqlite")]
    Sqlite(sqlx::SqlitePool),
    #[cfg(feature = "postgres")]
    Pg(sqlx::PgPool),
    #[cfg(feature = "mysql")]
    My(sqlx::MySqlPool),
}

/// An open transaction.
pub(crate) enum Tx {
    #[cfg(not(any(feature = "sqlite", feature = "postgres", feature = "mysql")))]
    None(std::convert::Infallible),
    #[cfg(feature = "sqlite")]
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
    #[cfg(feature = "postgres")]
    Pg(sqlx::Transaction<'static, sqlx::Postgres>),
    #[cfg(feature = "mysql")]
    My(sqlx::Transaction<'static, sqlx::MySql>),
}

/// A pooled connection outside a transaction.
pub(crate) enum Conn {
    #[cfg(not(any(feature = "sqlite", feature = "postgres", feature = "mysql")))]
    None(std::convert::Infallible),
    #[cfg(feature = "sqlite")]
    Sqlite(sqlx::pool::PoolConnection<sqlx::Sqlite>),
    #[cfg(feature = "postgres")]
    Pg(sqlx::pool::PoolConnection<sqlx::Postgres>),
    #[cfg(feature = "mysql")]
    My(sqlx::pool::PoolConnection<sqlx::MySql>),
}

/// A borrowed connection of either kind, to run statements on.
pub(crate) enum ConnRef<'a> {
    #[cfg(feature = "sqlite")]
    Sqlite(&'a mut sqlx::SqliteConnection),
    #[cfg(feature = "postgres")]
    Pg(&'a mut sqlx::PgConnection),
    #[cfg(feature = "mysql")]
    My(&'a mut sqlx::MySqlConnection),
    #[allow(dead_code)]
    None(std::marker::PhantomData<&'a ()>),
}

#[cfg(not(all(feature = "sqlite", feature = "postgres", feature = "mysql")))]
fn not_enabled(backend: Backend) -> Error {
    let feature = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
        Backend::MySql => "mysql",
    };
    Error::BackendNotEnabled { backend, feature }
}

impl Pool {
    /// Builds a lazy pool: no connection is made until the first statement.
    pub(crate) fn connect(url: &str, backend: Backend, cfg: &WriterConfig) -> Result<Pool> {
        let ctx = || Error::sql("parse database URL");
        match backend {
            Backend::Sqlite => {
                #[cfg(feature = "sqlite")]
                {
                    use sqlx::sqlite::{
                        SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions,
                    };
                    let memory = url.contains(":memory:") || url.contains("mode=memory");
                    let opts = SqliteConnectOptions::from_str(url)
                        .map_err(ctx())?
                        .create_if_missing(true)
                        .busy_timeout(cfg.busy_timeout);
                    // WAL lets readers (load) run beside the flusher; memory DBs cannot use it.
                    let opts = if memory {
                        opts
                    } else {
                        opts.journal_mode(SqliteJournalMode::Wal)
                    };
                    let mut po = SqlitePoolOptions::new().acquire_timeout(cfg.acquire_timeout);
                    po = if memory {
                        // Each connection to :memory: is its own database: keep exactly one, forever.
                        po.max_connections(1)
                            .min_connections(1)
                            .idle_timeout(None)
                            .max_lifetime(None)
                    } else {
                        po.max_connections(cfg.pool_size)
                    };
                    Ok(Pool::Sqlite(po.connect_lazy_with(opts)))
                }
                #[cfg(not(feature = "sqlite"))]
                Err(not_enabled(backend))
            }
            Backend::Postgres => {
                #[cfg(feature = "postgres")]
                {
                    let opts = sqlx::postgres::PgConnectOptions::from_str(url).map_err(ctx())?;
                    let po = sqlx::postgres::PgPoolOptions::new()
                        .max_connections(cfg.pool_size)
                        .acquire_timeout(cfg.acquire_timeout);
                    Ok(Pool::Pg(po.connect_lazy_with(opts)))
                }
                #[cfg(not(feature = "postgres"))]
                Err(not_enabled(backend))
            }
            Backend::MySql => {
                #[cfg(feature = "mysql")]
                {
                    let owned;
                    let url = match url.strip_prefix("mariadb:") {
                        Some(rest) => {
                            owned = format!("mysql:{rest}");
                            owned.as_str()
                        }
                        None => url,
                    };
                    let url = crate::url::mysql_tls_spelling(url);
                    // Found rows, not changed rows: an update-only flush
                    // counts the keys that matched (an add of 0 changes nothing).
                    let opts = sqlx::mysql::MySqlConnectOptions::from_str(&url)
                        .map_err(ctx())?
                        .found_rows(true);
                    let po = sqlx::mysql::MySqlPoolOptions::new()
                        .max_connections(cfg.pool_size)
                        .acquire_timeout(cfg.acquire_timeout);
                    Ok(Pool::My(po.connect_lazy_with(opts)))
                }
                #[cfg(not(feature = "mysql"))]
                Err(not_enabled(backend))
            }
        }
    }

    pub(crate) async fn begin(&self) -> Result<Tx, sqlx::Error> {
        match self {
            #[cfg(not(any(feature = "sqlite", feature = "postgres", feature = "mysql")))]
            Pool::None(never) => match *never {},
            #[cfg(feature = "sqlite")]
            Pool::Sqlite(p) => Ok(Tx::Sqlite(p.begin().await?)),
            #[cfg(feature = "postgres")]
            Pool::Pg(p) => Ok(Tx::Pg(p.begin().await.map_err(|e| self.tls(e))?)),
            #[cfg(feature = "mysql")]
            Pool::My(p) => Ok(Tx::My(p.begin().await.map_err(|e| self.tls(e))?)),
        }
    }

    pub(crate) async fn acquire(&self) -> Result<Conn, sqlx::Error> {
        match self {
            #[cfg(not(any(feature = "sqlite", feature = "postgres", feature = "mysql")))]
            Pool::None(never) => match *never {},
            #[cfg(feature = "sqlite")]
            Pool::Sqlite(p) => Ok(Conn::Sqlite(p.acquire().await?)),
            #[cfg(feature = "postgres")]
            Pool::Pg(p) => Ok(Conn::Pg(p.acquire().await.map_err(|e| self.tls(e))?)),
            #[cfg(feature = "mysql")]
            Pool::My(p) => Ok(Conn::My(p.acquire().await.map_err(|e| self.tls(e))?)),
        }
    }

    /// A TLS failure as one sentence naming what to check: the host (a
    /// certificate is issued to a name) and the mode asked for.
    #[cfg(any(feature = "postgres", feature = "mysql"))]
    pub(crate) fn tls(&self, e: sqlx::Error) -> sqlx::Error {
        // A refused certificate arrives as I/O carrying the rustls error.
        let source = match e {
            sqlx::Error::Tls(source) => source,
            sqlx::Error::Io(io)
                if io
                    .get_ref()
                    .is_some_and(|inner| inner.is::<rustls::Error>()) =>
            {
                Box::new(io)
            }
            other => return other,
        };
        let (host, port, mode) = match self {
            #[cfg(feature = "postgres")]
            Pool::Pg(p) => {
                use sqlx::postgres::PgSslMode as M;
                let o = p.connect_options();
                let mode = match o.get_ssl_mode() {
                    M::Disable => "sslmode=disable",
                    M::Allow => "sslmode=allow",
                    M::Prefer => "sslmode=prefer",
                    M::Require => "sslmode=require",
                    M::VerifyCa => "sslmode=verify-ca",
                    M::VerifyFull => "sslmode=verify-full",
                };
                (o.get_host().to_owned(), o.get_port(), mode)
            }
            #[cfg(feature = "mysql")]
            Pool::My(p) => {
                use sqlx::mysql::MySqlSslMode as M;
                let o = p.connect_options();
                let mode = match o.get_ssl_mode() {
                    M::Disabled => "ssl-mode=disable",
                    M::Preferred => "ssl-mode=prefer",
                    M::Required => "ssl-mode=require",
                    M::VerifyCa => "ssl-mode=verify-ca",
                    M::VerifyIdentity => "ssl-mode=verify-full",
                };
                (o.get_host().to_owned(), o.get_port(), mode)
            }
            #[allow(unreachable_patterns)]
            _ => return sqlx::Error::Tls(source),
        };
        sqlx::Error::Tls(format!("TLS to {host}:{port} with {mode} failed: {source}").into())
    }

    pub(crate) async fn close(&self) {
        match self {
            #[cfg(not(any(feature = "sqlite", feature = "postgres", feature = "mysql")))]
            Pool::None(never) => match *never {},
            #[cfg(feature = "sqlite")]
            Pool::Sqlite(p) => p.close().await,
            #[cfg(feature = "postgres")]
            Pool::Pg(p) => p.close().await,
            #[cfg(feature = "mysql")]
            Pool::My(p) => p.close().await,
        }
    }
}

impl Tx {
    pub(crate) fn conn(&mut self) -> ConnRef<'_> {
        match self {
            #[cfg(not(any(feature = "sqlite", feature = "postgres", feature = "mysql")))]
            Tx::None(never) => match *never {},
            #[cfg(feature = "sqlite")]
            Tx::Sqlite(t) => ConnRef::Sqlite(&mut *t),
            #[cfg(feature = "postgres")]
            Tx::Pg(t) => ConnRef::Pg(&mut *t),
            #[cfg(feature = "mysql")]
            Tx::My(t) => ConnRef::My(&mut *t),
        }
    }

    pub(crate) async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            #[cfg(not(any(feature = "sqlite", feature = "postgres", feature = "mysql")))]
            Tx::None(never) => match never {},
            #[cfg(feature = "sqlite")]
            Tx::Sqlite(t) => t.commit().await,
            #[cfg(feature = "postgres")]
            Tx::Pg(t) => t.commit().await,
            #[cfg(feature = "mysql")]
            Tx::My(t) => t.commit().await,
        }
    }

    pub(crate) async fn rollback(self) -> Result<(), sqlx::Error> {
        match self {
            #[cfg(not(any(feature = "sqlite", feature = "postgres", feature = "mysql")))]
            Tx::None(never) => match never {},
            #[cfg(feature = "sqlite")]
            Tx::Sqlite(t) => t.rollback().await,
            #[cfg(feature = "postgres")]
            Tx::Pg(t) => t.rollback().await,
            #[cfg(feature = "mysql")]
            Tx::My(t) => t.rollback().await,
        }
    }
}

impl Conn {
    pub(crate) fn conn(&mut self) -> ConnRef<'_> {
        match self {
            #[cfg(not(any(feature = "sqlite", feature = "postgres", feature = "mysql")))]
            Conn::None(never) => match *never {},
            #[cfg(feature = "sqlite")]
            Conn::Sqlite(c) => ConnRef::Sqlite(&mut *c),
            #[cfg(feature = "postgres")]
            Conn::Pg(c) => ConnRef::Pg(&mut *c),
            #[cfg(feature = "mysql")]
            Conn::My(c) => ConnRef::My(&mut *c),
        }
    }
}
