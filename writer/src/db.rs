//! The thin per-backend layer: pools, transactions, binding [`Arg`]s and
//! decoding rows into [`SqlValue`]s. Everything above it is backend-neutral
//! except the SQL text, which `sql.rs` renders.

use std::str::FromStr;

use sqlx::Row;

use crate::config::WriterConfig;
use crate::error::{Error, Result};
use crate::ident::Backend;
use crate::schema::{SqlType, SqlValue};
use crate::sql::text;

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

#[cfg(any(feature = "sqlite", feature = "mysql"))]
fn array_on_scalar_backend() -> sqlx::Error {
    sqlx::Error::Protocol("writebehind: array bind on a backend without arrays".into())
}

macro_rules! bind_scalars {
    ($q:expr, $args:expr, $arrays:ident) => {{
        let mut q = $q;
        for a in $args {
            q = match a {
                Arg::Int(v) => q.bind(v),
                Arg::Float(v) => q.bind(v),
                Arg::Text(v) => q.bind(v),
                Arg::Bytes(v) => q.bind(v),
                Arg::Bool(v) => q.bind(v),
                other => bind_scalars!(@arr $arrays, q, other),
            };
        }
        q
    }};
    (@arr yes, $q:ident, $a:ident) => {
        match $a {
            Arg::IntArr(v) => $q.bind(v),
            Arg::FloatArr(v) => $q.bind(v),
            Arg::TextArr(v) => $q.bind(v),
            Arg::BytesArr(v) => $q.bind(v),
            Arg::BoolArr(v) => $q.bind(v),
            _ => $q,
        }
    };
    (@arr no, $q:ident, $a:ident) => {{
        let _ = $a;
        return Err(array_on_scalar_backend());
    }};
}

macro_rules! decode_rows {
    ($rows:expr, $types:expr) => {
        decode_rows!($rows, $types, try_get)
    };
    ($rows:expr, $types:expr, $text_get:ident) => {{
        let mut out = Vec::with_capacity($rows.len());
        for row in $rows {
            let mut vals = Vec::with_capacity($types.len());
            for (i, t) in $types.iter().enumerate() {
                let v = match t {
                    SqlType::BigInt => row.try_get::<Option<i64>, _>(i)?.map(SqlValue::Int),
                    SqlType::Double => row.try_get::<Option<f64>, _>(i)?.map(SqlValue::Float),
                    SqlType::Text => row.$text_get::<Option<String>, _>(i)?.map(SqlValue::Text),
                    SqlType::Bytes => row.try_get::<Option<Vec<u8>>, _>(i)?.map(SqlValue::Bytes),
                    SqlType::Bool => row.try_get::<Option<bool>, _>(i)?.map(SqlValue::Bool),
                    // Read through `Dialect::read_expr`: 16 bytes, µs, text.
                    SqlType::Uuid => match row.try_get::<Option<Vec<u8>>, _>(i)? {
                        Some(b) => Some(SqlValue::Uuid(uuid_bytes(b)?)),
                        None => None,
                    },
                    SqlType::Timestamp => {
                        row.try_get::<Option<i64>, _>(i)?.map(SqlValue::Timestamp)
                    }
                    SqlType::Json => row.$text_get::<Option<String>, _>(i)?.map(SqlValue::Json),
                };
                vals.push(v.unwrap_or(SqlValue::Null));
            }
            out.push(vals);
        }
        out
    }};
}

/// A UUID column's 16 bytes.
fn uuid_bytes(b: Vec<u8>) -> Result<[u8; 16], sqlx::Error> {
    let n = b.len();
    <[u8; 16]>::try_from(b)
        .map_err(|_| sqlx::Error::Decode(format!("a UUID column holds {n} bytes, not 16").into()))
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
                    let opts = sqlx::mysql::MySqlConnectOptions::from_str(&url).map_err(ctx())?;
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

impl ConnRef<'_> {
    /// Runs a statement; returns the affected row count.
    pub(crate) async fn execute(self, sql: &str, args: Vec<Arg>) -> Result<u64, sqlx::Error> {
        match self {
            #[cfg(feature = "sqlite")]
            ConnRef::Sqlite(c) => {
                let q = bind_scalars!(sqlx::query(text(sql)), args, no);
                Ok(q.execute(c).await?.rows_affected())
            }
            #[cfg(feature = "postgres")]
            ConnRef::Pg(c) => {
                let q = bind_scalars!(sqlx::query(text(sql)), args, yes);
                Ok(q.execute(c).await?.rows_affected())
            }
            #[cfg(feature = "mysql")]
            ConnRef::My(c) => {
                let q = bind_scalars!(sqlx::query(text(sql)), args, no);
                Ok(q.execute(c).await?.rows_affected())
            }
            ConnRef::None(_) => Ok(0),
        }
    }

    /// Runs a query; decodes each row's columns as `types`.
    pub(crate) async fn fetch(
        self,
        sql: &str,
        args: Vec<Arg>,
        types: &[SqlType],
    ) -> Result<Vec<Vec<SqlValue>>, sqlx::Error> {
        match self {
            #[cfg(feature = "sqlite")]
            ConnRef::Sqlite(c) => {
                let q = bind_scalars!(sqlx::query(text(sql)), args, no);
                let rows = q.fetch_all(c).await?;
                Ok(decode_rows!(rows, types))
            }
            #[cfg(feature = "postgres")]
            ConnRef::Pg(c) => {
                let q = bind_scalars!(sqlx::query(text(sql)), args, yes);
                let rows = q.fetch_all(c).await?;
                Ok(decode_rows!(rows, types))
            }
            #[cfg(feature = "mysql")]
            ConnRef::My(c) => {
                let q = bind_scalars!(sqlx::query(text(sql)), args, no);
                let rows = q.fetch_all(c).await?;
                // Key columns use utf8mb4_bin, which MySQL flags BINARY; the
                // bytes are still UTF-8 text (decoding validates it).
                Ok(decode_rows!(rows, types, try_get_unchecked))
            }
            ConnRef::None(_) => Ok(Vec::new()),
        }
    }

    /// PostgreSQL: runs a query answering ONE row of arrays (an aggregated
    /// RETURNING), one array per entry of `types`, and returns it as rows
    /// (NULL arrays, from no rows, are empty).
    // Only PostgreSQL reads arrays; other builds keep the signature unused.
    #[cfg_attr(not(feature = "postgres"), allow(unused_variables))]
    pub(crate) async fn fetch_arrays(
        self,
        sql: &str,
        args: Vec<Arg>,
        types: &[SqlType],
    ) -> Result<Vec<Vec<SqlValue>>, sqlx::Error> {
        let columns = self.fetch_columns(sql, args, types).await?;
        let n = columns.first().map_or(0, Vec::len);
        let mut iters: Vec<_> = columns.into_iter().map(Vec::into_iter).collect();
        Ok((0..n)
            .map(|_| {
                iters
                    .iter_mut()
                    .map(|it| it.next().unwrap_or(SqlValue::Null))
                    .collect()
            })
            .collect())
    }

    /// [`fetch_arrays`](Self::fetch_arrays) as the columns it read, one
    /// vector per entry of `types` (no row is built).
    #[cfg_attr(not(feature = "postgres"), allow(unused_variables))]
    pub(crate) async fn fetch_columns(
        self,
        sql: &str,
        args: Vec<Arg>,
        types: &[SqlType],
    ) -> Result<Vec<Vec<SqlValue>>, sqlx::Error> {
        match self {
            #[cfg(feature = "postgres")]
            ConnRef::Pg(c) => {
                let q = bind_scalars!(sqlx::query(text(sql)), args, yes);
                let row = q.fetch_one(c).await?;
                let mut columns: Vec<Vec<SqlValue>> = Vec::with_capacity(types.len());
                for (i, t) in types.iter().enumerate() {
                    fn wrap<T>(
                        col: Option<Vec<Option<T>>>,
                        f: impl Fn(T) -> Result<SqlValue, sqlx::Error>,
                    ) -> Result<Vec<SqlValue>, sqlx::Error> {
                        col.unwrap_or_default()
                            .into_iter()
                            .map(|v| v.map_or(Ok(SqlValue::Null), &f))
                            .collect()
                    }
                    columns.push(match t {
                        SqlType::BigInt => wrap(row.try_get(i)?, |v| Ok(SqlValue::Int(v)))?,
                        SqlType::Timestamp => {
                            wrap(row.try_get(i)?, |v| Ok(SqlValue::Timestamp(v)))?
                        }
                        SqlType::Double => wrap(row.try_get(i)?, |v| Ok(SqlValue::Float(v)))?,
                        SqlType::Text => wrap(row.try_get(i)?, |v| Ok(SqlValue::Text(v)))?,
                        SqlType::Json => wrap(row.try_get(i)?, |v| Ok(SqlValue::Json(v)))?,
                        SqlType::Bytes => wrap(row.try_get(i)?, |v| Ok(SqlValue::Bytes(v)))?,
                        SqlType::Uuid => {
                            wrap(row.try_get(i)?, |v| Ok(SqlValue::Uuid(uuid_bytes(v)?)))?
                        }
                        SqlType::Bool => wrap(row.try_get(i)?, |v| Ok(SqlValue::Bool(v)))?,
                    });
                }
                Ok(columns)
            }
            #[allow(unreachable_patterns)]
            _ => Err(sqlx::Error::Protocol(
                "writebehind: aggregated RETURNING is PostgreSQL's".into(),
            )),
        }
    }

    /// Runs one SQL text with no parameters, unprepared (DDL, savepoints).
    pub(crate) async fn execute_raw(self, sql: &str) -> Result<(), sqlx::Error> {
        use sqlx::Executor;
        match self {
            #[cfg(feature = "sqlite")]
            ConnRef::Sqlite(c) => c.execute(text(sql)).await.map(drop),
            #[cfg(feature = "postgres")]
            ConnRef::Pg(c) => c.execute(text(sql)).await.map(drop),
            #[cfg(feature = "mysql")]
            ConnRef::My(c) => c.execute(text(sql)).await.map(drop),
            ConnRef::None(_) => Ok(()),
        }
    }
}
