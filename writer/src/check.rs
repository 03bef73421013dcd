//! The schema check at open: the data table against the mapping, per
//! backend (information_schema on PostgreSQL and MySQL/MariaDB, `PRAGMA
//! table_info` / `index_list` on SQLite).

use crate::db::Arg;
use crate::error::{Error, Result};
use crate::ident::Backend;
use crate::schema::{SqlType, SqlValue, WriteMode};
use crate::sql::{Dialect, Stmt};
use crate::writer::Writer;

/// MySQL: the character set and collation of `column` of the data table.
pub(crate) fn mysql_charset(d: &Dialect, column: &str) -> Stmt {
    Stmt {
        sql: "SELECT CHARACTER_SET_NAME, COLLATION_NAME FROM information_schema.COLUMNS \
              WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND COLUMN_NAME = ?"
            .to_owned(),
        args: vec![
            Arg::Text(Some(d.table_name().to_owned())),
            Arg::Text(Some(column.to_owned())),
        ],
    }
}

/// One column as the database declares it: name and type text.
struct DbColumn {
    name: String,
    /// The type to compare (PostgreSQL `data_type`/`udt_name`, MySQL
    /// `DATA_TYPE`, SQLite's declared type), lower case.
    ty: String,
    /// The type as shown in errors (MySQL `COLUMN_TYPE`).
    shown: String,
    /// An insert may leave it out: nullable, with a default, or filled by
    /// the database (identity, auto-increment, generated).
    optional: bool,
}

/// The type name the mapping expects, as shown in [`Error::Schema`]: the
/// type `create_tables` declares (`Dialect::type_name`), except that MySQL's
/// text and bytes are named by their family, since any text or blob type
/// passes the check, not only the LONGTEXT/LONGBLOB it creates.
pub(crate) fn expected_name(backend: Backend, ty: SqlType) -> &'static str {
    match (backend, ty) {
        (_, SqlType::BigInt) => "BIGINT",
        (Backend::Postgres, SqlType::Double) => "DOUBLE PRECISION",
        (Backend::Sqlite, SqlType::Double) => "REAL",
        (Backend::MySql, SqlType::Double) => "DOUBLE",
        (_, SqlType::Text) => "TEXT",
        (Backend::Postgres, SqlType::Bytes) => "BYTEA",
        (_, SqlType::Bytes) => "BLOB",
        (_, SqlType::Bool) => "BOOLEAN",
        (Backend::Postgres, SqlType::Uuid) => "UUID",
        (Backend::MySql, SqlType::Uuid) => "BINARY(16)",
        (Backend::Sqlite, SqlType::Uuid) => "BLOB",
        (Backend::Postgres, SqlType::Timestamp) => "TIMESTAMPTZ",
        (Backend::MySql, SqlType::Timestamp) => "DATETIME(6)",
        (Backend::Sqlite, SqlType::Timestamp) => "INTEGER",
        (Backend::Postgres, SqlType::Json) => "JSONB",
        (Backend::MySql, SqlType::Json) => "JSON",
        (Backend::Sqlite, SqlType::Json) => "TEXT",
    }
}

/// Whether a column declared `c` can hold `ty` both ways.
fn compatible(backend: Backend, ty: SqlType, c: &DbColumn) -> bool {
    let t = c.ty.as_str();
    match backend {
        Backend::Postgres => match ty {
            SqlType::BigInt => matches!(t, "bigint" | "integer" | "smallint"),
            SqlType::Double => matches!(t, "double precision" | "real" | "numeric"),
            SqlType::Text => matches!(t, "text" | "character varying" | "character" | "citext"),
            SqlType::Bytes => t == "bytea",
            SqlType::Bool => t == "boolean",
            SqlType::Uuid => t == "uuid",
            SqlType::Timestamp => {
                matches!(
                    t,
                    "timestamp with time zone" | "timestamp without time zone"
                )
            }
            SqlType::Json => matches!(t, "jsonb" | "json"),
        },
        Backend::MySql => {
            let shown = c.shown.to_ascii_lowercase();
            match ty {
                SqlType::BigInt => {
                    matches!(t, "bigint" | "int" | "mediumint" | "smallint")
                        || (t == "tinyint" && !shown.starts_with("tinyint(1)"))
                }
                SqlType::Double => matches!(t, "double" | "float" | "decimal"),
                SqlType::Text => matches!(
                    t,
                    "varchar" | "char" | "text" | "tinytext" | "mediumtext" | "longtext"
                ),
                SqlType::Bytes => matches!(
                    t,
                    "varbinary" | "binary" | "blob" | "tinyblob" | "mediumblob" | "longblob"
                ),
                SqlType::Bool => t == "tinyint" || t == "bit" || t == "boolean",
                SqlType::Uuid => shown == "binary(16)" || t == "uuid",
                SqlType::Timestamp => matches!(t, "datetime" | "timestamp"),
                // MariaDB's JSON is LONGTEXT (with a JSON_VALID check).
                SqlType::Json => matches!(t, "json" | "longtext"),
            }
        }
        // SQLite's type affinity rules (https://sqlite.org/datatype3.html).
        Backend::Sqlite => {
            let int = t.contains("int");
            let text = t.contains("char") || t.contains("clob") || t.contains("text");
            let blob = t.contains("blob") || t.is_empty();
            let real = t.contains("real") || t.contains("floa") || t.contains("doub");
            match ty {
                SqlType::BigInt | SqlType::Timestamp => int,
                SqlType::Double => real || t.contains("numeric") || t.contains("decimal"),
                SqlType::Text => text,
                SqlType::Bytes | SqlType::Uuid => blob,
                SqlType::Bool => int || t.contains("bool"),
                SqlType::Json => text || t.contains("json"),
            }
        }
    }
}

fn integer(backend: Backend, c: &DbColumn) -> bool {
    compatible(backend, SqlType::BigInt, c)
}

impl Writer {
    /// Checks the data table against the mapping, before any write is
    /// accepted: the table exists; every mapped column (keys, values,
    /// version) exists with a compatible type; the key columns are the
    /// primary key or a unique index (a non-unique key would match several
    /// rows); the version column, if mapped, is an integer. The first
    /// mismatch is [`Error::Schema`] naming the table, the column, the
    /// expected and the found type.
    ///
    /// Types are compatible when values travel both ways unchanged: e.g. a
    /// `BigInt` field fits `bigint`, `integer` or `smallint` (PostgreSQL),
    /// any integer type but `TINYINT(1)` (MySQL), an `INT` affinity
    /// (SQLite); `Text` fits `text`/`varchar`/`char`; `Uuid` fits `uuid`
    /// (PostgreSQL), `BINARY(16)` (MySQL), a BLOB (SQLite).
    pub async fn check_schema(&self) -> Result<()> {
        self.server_facts().await?;
        let d = self.dialect();
        let backend = d.backend;
        let table = d.table_name().to_owned();
        let schema_err = |column: Option<&str>, expected: String, found: String| Error::Schema {
            table: table.clone(),
            column: column.map(str::to_owned),
            expected,
            found,
        };
        let columns = self.db_columns().await?;
        if columns.is_empty() {
            return Err(schema_err(
                None,
                "a table".to_owned(),
                "no table".to_owned(),
            ));
        }
        let find = |name: &str| columns.iter().find(|c| c.name.eq_ignore_ascii_case(name));
        let mapped = d.key_columns().iter().chain(d.columns());
        for c in mapped {
            let expected = expected_name(backend, c.ty);
            match find(c.name.as_str()) {
                None => {
                    return Err(schema_err(
                        Some(c.name.as_str()),
                        expected.to_owned(),
                        "no column".to_owned(),
                    ))
                }
                Some(db) if !compatible(backend, c.ty, db) => {
                    return Err(schema_err(
                        Some(c.name.as_str()),
                        expected.to_owned(),
                        db.shown.clone(),
                    ))
                }
                Some(_) => {}
            }
        }
        if let Some(v) = &self.config().table.version_column {
            match find(v.as_str()) {
                None => {
                    return Err(schema_err(
                        Some(v.as_str()),
                        "BIGINT".to_owned(),
                        "no column".to_owned(),
                    ))
                }
                Some(db) if !integer(backend, db) => {
                    return Err(schema_err(
                        Some(v.as_str()),
                        "BIGINT".to_owned(),
                        db.shown.clone(),
                    ))
                }
                Some(_) => {}
            }
        }
        // An upsert inserts the rows it does not find with the mapped
        // columns only: a column it leaves out must be able to stay out, or
        // every insert fails (and its writes are dead-lettered).
        if matches!(self.config().table.mode, WriteMode::Upsert) {
            let version = self.config().table.version_column.as_ref();
            let is_mapped = |name: &str| {
                d.key_columns()
                    .iter()
                    .chain(d.columns())
                    .map(|c| c.name.as_str())
                    .chain(version.map(|v| v.as_str()))
                    .any(|m| m.eq_ignore_ascii_case(name))
            };
            if let Some(c) = columns.iter().find(|c| !c.optional && !is_mapped(&c.name)) {
                return Err(schema_err(
                    Some(&c.name),
                    "a column an insert may leave out (nullable or with a default), \
                     or an update-only mapping"
                        .to_owned(),
                    "NOT NULL without a default".to_owned(),
                ));
            }
        }
        let mut want: Vec<String> = d
            .key_columns()
            .iter()
            .map(|c| c.name.as_str().to_ascii_lowercase())
            .collect();
        want.sort();
        let unique = self.unique_keys().await?;
        let found = unique.iter().any(|cols| {
            let mut have: Vec<String> = cols.iter().map(|c| c.to_ascii_lowercase()).collect();
            have.sort();
            have == want
        });
        if !found {
            let names: Vec<&str> = d.key_columns().iter().map(|c| c.name.as_str()).collect();
            let names = names.join(", ");
            return Err(schema_err(
                Some(&names),
                format!("a primary key or unique index on ({names})"),
                "no unique index on these columns".to_owned(),
            ));
        }
        Ok(())
    }

    async fn query_rows(&self, st: Stmt, types: &[SqlType]) -> Result<Vec<Vec<SqlValue>>> {
        let mut conn = self.connect_for("check_schema").await?;
        let Stmt { sql, args } = st;
        conn.conn()
            .fetch(&sql, args, types)
            .await
            .map_err(Error::sql(format!(
                "check_schema of table {}",
                self.dialect().table_name()
            )))
    }

    async fn db_columns(&self) -> Result<Vec<DbColumn>> {
        let d = self.dialect();
        let table = Arg::Text(Some(d.table_name().to_owned()));
        let sql = match d.backend {
            Backend::Postgres => {
                "SELECT column_name::text, data_type::text, \
                 CASE WHEN data_type = 'USER-DEFINED' THEN udt_name::text ELSE data_type::text END, \
                 CASE WHEN is_nullable = 'YES' OR column_default IS NOT NULL OR is_identity = 'YES' \
                 OR is_generated <> 'NEVER' THEN 'y' ELSE 'n' END \
                 FROM information_schema.columns \
                 WHERE table_schema = current_schema() AND table_name = $1"
            }
            Backend::MySql => {
                "SELECT CAST(COLUMN_NAME AS CHAR), CAST(DATA_TYPE AS CHAR), CAST(COLUMN_TYPE AS CHAR), \
                 CAST(CASE WHEN IS_NULLABLE = 'YES' OR COLUMN_DEFAULT IS NOT NULL \
                 OR EXTRA LIKE '%auto_increment%' OR EXTRA LIKE '%GENERATED%' THEN 'y' ELSE 'n' END AS CHAR) \
                 FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?"
            }
            Backend::Sqlite => {
                "SELECT name, type, type, \
                 CASE WHEN \"notnull\" = 0 OR dflt_value IS NOT NULL OR pk > 0 THEN 'y' ELSE 'n' END \
                 FROM pragma_table_info(?)"
            }
        };
        let rows = self
            .query_rows(
                Stmt {
                    sql: sql.to_owned(),
                    args: vec![table],
                },
                &[SqlType::Text, SqlType::Text, SqlType::Text, SqlType::Text],
            )
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|r| match &r[..] {
                [SqlValue::Text(name), SqlValue::Text(ty), SqlValue::Text(shown), optional] => {
                    let (ty, shown) = if d.backend == Backend::Postgres {
                        // USER-DEFINED types (citext) compare by their name.
                        (shown.to_ascii_lowercase(), ty.clone())
                    } else {
                        (ty.to_ascii_lowercase(), shown.clone())
                    };
                    Some(DbColumn {
                        name: name.clone(),
                        ty,
                        shown,
                        optional: *optional != SqlValue::Text("n".into()),
                    })
                }
                [SqlValue::Text(name), SqlValue::Null, _, optional] => Some(DbColumn {
                    name: name.clone(),
                    ty: String::new(),
                    shown: String::new(),
                    optional: *optional != SqlValue::Text("n".into()),
                }),
                _ => None,
            })
            .collect())
    }

    /// The column sets of the primary key and of every unique index
    /// (without a predicate).
    async fn unique_keys(&self) -> Result<Vec<Vec<String>>> {
        let d = self.dialect();
        let table = || Arg::Text(Some(d.table_name().to_owned()));
        let (sql, args) = match d.backend {
            Backend::Postgres => (
                "SELECT array_to_string(ARRAY(SELECT a.attname::text \
                 FROM unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) \
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                 ORDER BY k.n), ',') \
                 FROM pg_index i \
                 WHERE i.indrelid = to_regclass(quote_ident(current_schema()) || '.' || quote_ident($1)) \
                 AND i.indisunique AND i.indpred IS NULL",
                vec![table()],
            ),
            Backend::MySql => (
                "SELECT CAST(GROUP_CONCAT(COLUMN_NAME ORDER BY SEQ_IN_INDEX SEPARATOR ',') AS CHAR) \
                 FROM information_schema.STATISTICS \
                 WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND NON_UNIQUE = 0 \
                 GROUP BY INDEX_NAME",
                vec![table()],
            ),
            Backend::Sqlite => (
                "SELECT group_concat(ii.name, ',') FROM pragma_index_list(?1) AS il, \
                 pragma_index_info(il.name) AS ii WHERE il.\"unique\" = 1 AND il.partial = 0 \
                 GROUP BY il.name \
                 UNION ALL \
                 SELECT group_concat(name, ',') FROM pragma_table_info(?1) WHERE pk > 0 \
                 HAVING count(*) > 0",
                vec![table()],
            ),
        };
        let rows = self
            .query_rows(
                Stmt {
                    sql: sql.to_owned(),
                    args,
                },
                &[SqlType::Text],
            )
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|r| match r.into_iter().next() {
                Some(SqlValue::Text(cols)) => Some(cols.split(',').map(str::to_owned).collect()),
                _ => None,
            })
            .collect())
    }
}
