//! Reads outside a flush: rows by key (read-through), the whole table in
//! pages, and SQL written by the caller for tests and tooling.

use std::collections::HashMap;

use writebehind_core::{Key, Value};

use super::Writer;
use crate::error::{Error, Result};
use crate::schema::{SqlType, SqlValue};
use crate::sql::Stmt;

impl Writer {
    /// Read-through: the rows of `keys` (value, version), `None` where
    /// absent, in `keys` order. One `IN`/`= ANY` query per chunk.
    pub async fn load(&self, keys: &[Key]) -> Result<Vec<(Key, Option<(Value, i64)>)>> {
        let d = &self.inner.dialect;
        let mut conn = self.connect_for("load").await?;
        let per = d.rows_per_statement(self.inner.cfg.max_rows_per_statement, d.params_per_key());
        let types = d.select_types();
        let mut found: HashMap<Key, (Value, i64)> = HashMap::with_capacity(keys.len());
        for chunk in keys.chunks(per) {
            let mut kvals = Vec::with_capacity(chunk.len());
            for k in chunk {
                kvals.push(self.inner.key_values(k).map_err(|message| Error::Codec {
                    key: k.clone(),
                    message,
                })?);
            }
            let refs: Vec<&[SqlValue]> = kvals.iter().map(|k| &k[..]).collect();
            let Stmt { sql, args } = d.select(&refs, false);
            let rows = conn
                .conn()
                .fetch(&sql, args, &types)
                .await
                .map_err(Error::sql(self.ctx("load")))?;
            for row in rows {
                let (k, v, ver) = self.inner.decode_row(row)?;
                found.insert(k, (v, ver));
            }
        }
        Ok(keys
            .iter()
            .map(|k| (k.clone(), found.get(k).cloned()))
            .collect())
    }

    /// Reads the whole data table in key order, `batch` rows per query
    /// (keyset pagination: `WHERE key > last ORDER BY key LIMIT batch`),
    /// handing each page to `f`. Returns the number of rows read.
    pub async fn load_all(
        &self,
        batch: usize,
        mut f: impl FnMut(Vec<(Key, Value, i64)>),
    ) -> Result<u64> {
        if batch == 0 {
            return Err(Error::Config("load_all: batch must be at least 1".into()));
        }
        let d = &self.inner.dialect;
        let limit = i64::try_from(batch).unwrap_or(i64::MAX);
        let types = d.select_types();
        let mut conn = self.connect_for("load_all").await?;
        let mut after: Option<Vec<SqlValue>> = None;
        let mut total = 0u64;
        loop {
            let Stmt { sql, args } = d.page(after.as_deref(), limit);
            let rows = conn
                .conn()
                .fetch(&sql, args, &types)
                .await
                .map_err(Error::sql(self.ctx("load_all")))?;
            let n = rows.len();
            let page = rows
                .into_iter()
                .map(|r| self.inner.decode_row(r))
                .collect::<Result<Vec<_>>>()?;
            after = match page.last() {
                Some((k, _, _)) => {
                    Some(self.inner.key_values(k).map_err(|message| Error::Codec {
                        key: k.clone(),
                        message,
                    })?)
                }
                None => None,
            };
            total += n as u64;
            if n > 0 {
                f(page);
            }
            if n < batch {
                return Ok(total);
            }
        }
    }

    /// Runs SQL written by the caller (no parameters, unprepared): for
    /// tests, migrations and tooling. Never pass user input here.
    pub async fn execute_sql(&self, sql: &str) -> Result<()> {
        let mut conn = self.connect_for("execute_sql").await?;
        conn.conn()
            .execute_raw(sql)
            .await
            .map_err(Error::sql("execute_sql"))
    }

    /// Runs a query written by the caller and decodes each row's columns as
    /// `types` (NULL becomes [`SqlValue::Null`]): for tests and tooling.
    pub async fn query_sql(&self, sql: &str, types: &[SqlType]) -> Result<Vec<Vec<SqlValue>>> {
        let mut conn = self.connect_for("query_sql").await?;
        conn.conn()
            .fetch(sql, Vec::new(), types)
            .await
            .map_err(Error::sql("query_sql"))
    }
}
