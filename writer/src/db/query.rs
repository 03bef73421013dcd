//! Statements on a connection of any backend: [`Arg`]s bound, rows decoded
//! into [`SqlValue`]s (PostgreSQL's aggregated arrays as columns).

use sqlx::Row;

use super::{Arg, ConnRef};
use crate::schema::{SqlType, SqlValue};
use crate::sql::text;

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
