//! The crate's error type and the one place that classifies database errors
//! into transient (retry) and permanent (isolate, dead-letter).

use writebehind_core::{Key, Lsn};

use crate::ident::Backend;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Whether retrying the same operation later can succeed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// The database or the path to it is (temporarily) unavailable, or the
    /// transaction lost a race (deadlock, serialization failure): retry.
    Transient,
    /// The statement or data is wrong: retrying will fail the same way.
    Permanent,
}

/// Everything that can go wrong in the writer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A table or column name is not a plain identifier.
    #[error("invalid SQL identifier {name:?}: {reason}")]
    InvalidIdent {
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// The database URL has a scheme this crate does not know.
    #[error("unsupported database URL scheme {scheme:?}: expected sqlite:, postgres://, postgresql:// or mysql://")]
    UnsupportedUrl {
        /// The scheme found (the URL itself is not kept: it may hold a password).
        scheme: String,
    },
    /// The URL names a backend whose cargo feature is off.
    #[error(
        "backend {backend:?} is not compiled in: enable the writebehind-writer feature `{feature}`"
    )]
    BackendNotEnabled {
        /// The backend the URL names.
        backend: Backend,
        /// The cargo feature that enables it.
        feature: &'static str,
    },
    /// The writer configuration is inconsistent.
    #[error("invalid writer configuration: {0}")]
    Config(String),
    /// A database operation failed.
    #[error("{context}: {source}")]
    Sql {
        /// What the writer was doing (statement kind and table).
        context: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// The [`RowCodec`](crate::RowCodec) could not encode or decode a row.
    #[error("row codec failed for key {key:?}: {message}")]
    Codec {
        /// The key whose row failed.
        key: Key,
        /// The codec's message.
        message: String,
    },
    /// A change does not fit the table (e.g. `Add` on a record table).
    #[error("change for key {key:?} does not fit table {table}: {message}")]
    Mismatch {
        /// The table.
        table: String,
        /// The key.
        key: Key,
        /// What does not fit.
        message: String,
    },
    /// A row read from the database has an unexpected shape.
    #[error("table {table}: row for key {key:?} is unreadable: {message}")]
    BadRow {
        /// The table read.
        table: String,
        /// The key of the row.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// Another owner claimed this instance id after this writer did
    /// ([`Writer::claim`](crate::Writer::claim)): its progress row holds a
    /// newer owner epoch. The flush was rolled back, nothing of it is in the
    /// database. Permanent: this writer must stop flushing for the instance
    /// (a retry fails the same way); only a new claim takes it back.
    #[error(
        "instance {instance:?} was claimed by a newer owner (owner epoch {current}, ours {ours}): \
         this writer is fenced and flushes nothing more for it"
    )]
    Fenced {
        /// The instance id.
        instance: String,
        /// The epoch this writer claimed.
        ours: u64,
        /// The epoch in the progress row: the new owner's.
        current: u64,
    },
    /// The data table does not match the mapping (checked at open by
    /// [`Writer::check_schema`](crate::Writer::check_schema)): a missing
    /// table (`column: None`), a missing column, a column of an
    /// incompatible type, key columns without a primary key or unique
    /// index, a version column that is not an integer. Permanent.
    #[error("table {table}{}: expected {expected}, found {found}", .column.as_deref().map(|c| format!(", column {c}")).unwrap_or_default())]
    Schema {
        /// The table.
        table: String,
        /// The column, `None` when the table itself is missing.
        column: Option<String>,
        /// What the mapping expects.
        expected: String,
        /// What the database has.
        found: String,
    },
    /// A WAL position does not fit the BIGINT progress column.
    #[error("cut position {position} does not fit a signed 64-bit BIGINT")]
    PositionOutOfRange {
        /// The position.
        position: Lsn,
    },
}

impl Error {
    /// Whether a retry can help. The single classification point for every
    /// error this crate returns.
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::Sql { source, .. } => classify_sqlx(source),
            _ => ErrorClass::Permanent,
        }
    }

    /// A permanent error the database raised for a statement's data
    /// (constraint, data exception): attributable to the rows it wrote, so
    /// the flush isolates them. Decode or codec failures are not.
    ///
    /// Schema errors (a missing table or column, a syntax error) are not
    /// row errors: dead-lettering every row for them would empty the cache
    /// into the dead-letter table, so they fail the flush and are retried.
    pub(crate) fn is_row_error(&self) -> bool {
        match self {
            Error::Sql {
                source: sqlx::Error::Database(db),
                ..
            } => is_row_data_error(&DbCode::of(db.as_ref())),
            _ => false,
        }
    }

    pub(crate) fn sql(context: impl Into<String>) -> impl FnOnce(sqlx::Error) -> Error {
        let context = context.into();
        move |source| Error::Sql { context, source }
    }
}

/// Classifies a driver error.
pub(crate) fn classify_sqlx(e: &sqlx::Error) -> ErrorClass {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => ErrorClass::Transient,
        sqlx::Error::Database(db) => classify_db(&DbCode::of(db.as_ref())),
        _ => ErrorClass::Permanent,
    }
}

/// The codes a database error carries, per backend.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(dead_code)] // Each variant is built only when its backend's feature is on.
pub(crate) enum DbCode {
    /// PostgreSQL SQLSTATE.
    Postgres(String),
    /// MySQL/MariaDB error number and SQLSTATE.
    MySql(u16, String),
    /// SQLite extended result code.
    Sqlite(i32),
    /// A driver we do not know: only the SQLSTATE, if any.
    Other(Option<String>),
}

impl DbCode {
    fn of(db: &dyn sqlx::error::DatabaseError) -> DbCode {
        let code = db.code().map(|c| c.into_owned());
        #[cfg(feature = "mysql")]
        if let Some(my) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
            return DbCode::MySql(my.number(), code.unwrap_or_default());
        }
        #[cfg(feature = "postgres")]
        if db
            .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
            .is_some()
        {
            return DbCode::Postgres(code.unwrap_or_default());
        }
        #[cfg(feature = "sqlite")]
        if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
            let n = code.as_deref().and_then(|c| c.parse().ok()).unwrap_or(1);
            return DbCode::Sqlite(n);
        }
        DbCode::Other(code)
    }
}

/// Transient: Postgres 40001 (serialization), 40P01 (deadlock), 55P03 (lock
/// not available), 57P01/57P02/57P03 (shutdown, cannot connect now), 53*
/// (insufficient resources), 08* (connection). MySQL 1213 (deadlock), 1205
/// (lock wait timeout), 1040 (too many connections), 1053 (shutdown), 1927
/// (connection killed), 2002/2003/2006/2013 (connection lost). SQLite BUSY,
/// LOCKED, IOERR, FULL (any extended code of those). Everything else,
/// notably 22* (data) and 23* (constraints), is permanent.
pub(crate) fn classify_db(code: &DbCode) -> ErrorClass {
    let transient_state = |s: &str| {
        matches!(s, "40001" | "40P01" | "55P03" | "57P01" | "57P02" | "57P03")
            || s.starts_with("08")
            || s.starts_with("53")
    };
    let transient = match code {
        DbCode::Postgres(s) => transient_state(s),
        DbCode::MySql(n, _) => matches!(
            n,
            1205 | 1213 | 1040 | 1053 | 1927 | 2002 | 2003 | 2006 | 2013
        ),
        // Primary code is the low byte: 5 BUSY, 6 LOCKED, 10 IOERR, 13 FULL.
        DbCode::Sqlite(c) => matches!(c & 0xff, 5 | 6 | 10 | 13),
        DbCode::Other(s) => s.as_deref().is_some_and(transient_state),
    };
    if transient {
        ErrorClass::Transient
    } else {
        ErrorClass::Permanent
    }
}

/// Errors a row's data causes: SQLSTATE classes 22 (data exception) and 23
/// (integrity constraint) on PostgreSQL and MySQL/MariaDB, PostgreSQL 21000
/// (cardinality violation), MySQL 3819 (check
/// constraint), 1048/1364 (missing value), 1264/1265/1366/1406/1292 (value
/// out of range or malformed); SQLite CONSTRAINT (19), MISMATCH (20),
/// TOOBIG (18) and their extended codes.
pub(crate) fn is_row_data_error(code: &DbCode) -> bool {
    let data_state = |s: &str| s.starts_with("22") || s.starts_with("23");
    match code {
        // 21000: one statement touched a key twice (a cut with a duplicate key);
        // splitting the chunk separates the two rows.
        DbCode::Postgres(s) => data_state(s) || s == "21000",
        DbCode::MySql(n, s) => {
            data_state(s)
                || matches!(
                    n,
                    1048 | 1062
                        | 1264
                        | 1265
                        | 1292
                        | 1364
                        | 1366
                        | 1406
                        | 1451
                        | 1452
                        | 3819
                        | 4025
                )
        }
        DbCode::Sqlite(c) => matches!(c & 0xff, 18..=20),
        DbCode::Other(s) => s.as_deref().is_some_and(data_state),
    }
}

#[cfg(test)]
mod row_error_tests {
    use super::*;

    #[test]
    fn data_and_constraint_errors_are_row_errors() {
        assert!(is_row_data_error(&DbCode::Postgres("23514".into())));
        assert!(is_row_data_error(&DbCode::Postgres("22003".into())));
        assert!(is_row_data_error(&DbCode::Postgres("21000".into())));
        assert!(is_row_data_error(&DbCode::MySql(3819, "HY000".into())));
        assert!(is_row_data_error(&DbCode::MySql(1062, "23000".into())));
        assert!(is_row_data_error(&DbCode::Sqlite(275))); // CHECK
        assert!(is_row_data_error(&DbCode::Sqlite(2067))); // UNIQUE
    }

    #[test]
    fn schema_errors_are_not_row_errors() {
        assert!(!is_row_data_error(&DbCode::Postgres("42P01".into()))); // undefined table
        assert!(!is_row_data_error(&DbCode::Postgres("42703".into()))); // undefined column
        assert!(!is_row_data_error(&DbCode::MySql(1146, "42S02".into())));
        assert!(!is_row_data_error(&DbCode::MySql(1054, "42S22".into())));
        assert!(!is_row_data_error(&DbCode::Sqlite(1))); // "no such table"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pg(s: &str) -> ErrorClass {
        classify_db(&DbCode::Postgres(s.into()))
    }

    #[test]
    fn postgres_codes() {
        for s in [
            "40001", "40P01", "57P01", "57P03", "08006", "08001", "53300", "55P03",
        ] {
            assert_eq!(pg(s), ErrorClass::Transient, "{s}");
        }
        for s in [
            "23505", "23514", "23502", "22001", "22P02", "42P01", "21000",
        ] {
            assert_eq!(pg(s), ErrorClass::Permanent, "{s}");
        }
    }

    #[test]
    fn mysql_codes() {
        for n in [1213, 1205, 2006, 2013, 1040] {
            assert_eq!(
                classify_db(&DbCode::MySql(n, "HY000".into())),
                ErrorClass::Transient,
                "{n}"
            );
        }
        for (n, s) in [
            (1062, "23000"),
            (4025, "23000"),
            (1406, "22001"),
            (1146, "42S02"),
        ] {
            assert_eq!(
                classify_db(&DbCode::MySql(n, s.into())),
                ErrorClass::Permanent,
                "{n}"
            );
        }
    }

    #[test]
    fn sqlite_codes() {
        // BUSY, BUSY_SNAPSHOT (517), LOCKED, LOCKED_SHAREDCACHE (262), IOERR_FSYNC (1034), FULL.
        for c in [5, 517, 6, 262, 10, 1034, 13] {
            assert_eq!(
                classify_db(&DbCode::Sqlite(c)),
                ErrorClass::Transient,
                "{c}"
            );
        }
        // CONSTRAINT_CHECK (275), CONSTRAINT_UNIQUE (2067), MISMATCH (20), ERROR (1).
        for c in [275, 2067, 20, 1, 19] {
            assert_eq!(
                classify_db(&DbCode::Sqlite(c)),
                ErrorClass::Permanent,
                "{c}"
            );
        }
    }

    #[test]
    fn driver_level_errors() {
        let io = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(classify_sqlx(&io), ErrorClass::Transient);
        assert_eq!(
            classify_sqlx(&sqlx::Error::PoolTimedOut),
            ErrorClass::Transient
        );
        assert_eq!(
            classify_sqlx(&sqlx::Error::PoolClosed),
            ErrorClass::Transient
        );
        assert_eq!(
            classify_sqlx(&sqlx::Error::RowNotFound),
            ErrorClass::Permanent
        );
        let e = Error::Sql {
            context: "x".into(),
            source: sqlx::Error::PoolTimedOut,
        };
        assert_eq!(e.class(), ErrorClass::Transient);
        let e = Error::Codec {
            key: "k".into(),
            message: "bad".into(),
        };
        assert_eq!(e.class(), ErrorClass::Permanent);
        let e = Error::Fenced {
            instance: "i".into(),
            ours: 1,
            current: 2,
        };
        assert_eq!(
            e.class(),
            ErrorClass::Permanent,
            "a fenced writer never retries"
        );
        assert!(!e.is_row_error());
    }
}
