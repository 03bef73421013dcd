//! The statements' SQL per backend, and that `text` stays the one vouching place.

#![allow(clippy::unwrap_used)]
use std::sync::Arc;

use super::*;
use crate::db::Arg;
use crate::schema::{Column, RowCodec, TableSpec};

struct Counters(Vec<Column>);
impl RowCodec for Counters {
    fn columns(&self) -> &[Column] {
        &self.0
    }
    fn to_row(&self, _: &[u8]) -> std::result::Result<Vec<SqlValue>, String> {
        Err("delta".into())
    }
    fn from_row(&self, _: Vec<SqlValue>) -> std::result::Result<Vec<u8>, String> {
        Err("delta".into())
    }
}

fn posts(mode: WriteMode) -> Dialect {
    let codec = Arc::new(Counters(vec![
        Column::counter("views").unwrap(),
        Column::counter("likes").unwrap(),
    ]));
    let spec = TableSpec::record("posts", codec)
        .unwrap()
        .key(crate::schema::TextKey::named("id").unwrap())
        .version_column(None)
        .unwrap()
        .mode(mode);
    Dialect::new(Backend::MySql, &WriterConfig::new("i").table(spec))
}

fn row(k: &str) -> RowData {
    RowData {
        key: Key::from(k),
        kvals: vec![SqlValue::Text(k.to_owned())],
        cols: vec![SqlValue::Int(1), SqlValue::Int(2)],
    }
}

/// MySQL >= 8.0.19 gets the row alias, MariaDB and older MySQL VALUES().
#[test]
fn mysql_delta_upsert_per_server() {
    let d = posts(WriteMode::Upsert);
    let (a, b) = (row("a"), row("b"));
    let alias = Facts {
        row_alias: true,
        key_charsets: Vec::new(),
    };
    let st = d.write(Mode::Add, &[&a, &b], false, &alias);
    assert_eq!(
        st.sql,
        "INSERT INTO `posts` (`id`, `views`, `likes`) VALUES (?, ?, ?), (?, ?, ?) AS wb_new \
         ON DUPLICATE KEY UPDATE `views` = `views` + wb_new.`views`, `likes` = `likes` + wb_new.`likes`"
    );
    let st = d.write(Mode::Add, &[&a], false, &Facts::default());
    assert_eq!(
        st.sql,
        "INSERT INTO `posts` (`id`, `views`, `likes`) VALUES (?, ?, ?) \
         ON DUPLICATE KEY UPDATE `views` = `views` + VALUES(`views`), `likes` = `likes` + VALUES(`likes`)"
    );
    assert_eq!(st.args.len(), 3);
    assert!(crate::writer::mysql_has_row_alias("8.0.19"));
    assert!(crate::writer::mysql_has_row_alias("8.4.3-commercial"));
    assert!(!crate::writer::mysql_has_row_alias("8.0.18-log"));
    assert!(!crate::writer::mysql_has_row_alias("5.7.44"));
    assert!(!crate::writer::mysql_has_row_alias(
        "10.11.6-MariaDB-0+deb12u1"
    ));
    assert!(!crate::writer::mysql_has_row_alias("11.4.2-MariaDB"));
}

/// The read-back declares the table's own collation for a text key.
#[test]
fn mysql_read_back_uses_the_key_collation() {
    let d = posts(WriteMode::Upsert);
    let facts = Facts {
        row_alias: false,
        key_charsets: vec![Some(("utf8mb4".into(), "utf8mb4_unicode_ci".into()))],
    };
    let k = [SqlValue::Text("a".into())];
    let st = d.read_back(Mode::Add, &[&k[..]], &facts);
    assert!(
        st.sql
            .contains("k0 VARCHAR(768) CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci PATH '$'"),
        "{}",
        st.sql
    );
}

/// Update-only counter deltas on MySQL join ONE JSON parameter through
/// `JSON_TABLE` (one statement text for every chunk), whose text key
/// carries the column's collation; puts join a derived table. Neither inserts.
#[test]
fn mysql_update_only_is_an_update() {
    let d = posts(WriteMode::UpdateOnly);
    let (a, b) = (row("a"), row("b"));
    let facts = Facts {
        row_alias: false,
        key_charsets: vec![Some(("utf8mb4".into(), "utf8mb4_unicode_ci".into()))],
    };
    let st = d.write(Mode::Add, &[&a, &b], false, &facts);
    assert_eq!(
        st.sql,
        "UPDATE JSON_TABLE(?, '$[*]' COLUMNS (k0 VARCHAR(768) CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci PATH '$[0]', \
         c0 BIGINT PATH '$[1]' ERROR ON ERROR, c1 BIGINT PATH '$[2]' ERROR ON ERROR)) AS wb_src \
         STRAIGHT_JOIN `posts` ON `posts`.`id` = wb_src.k0 \
         SET `posts`.`views` = `posts`.`views` + wb_src.c0, `posts`.`likes` = `posts`.`likes` + wb_src.c1"
    );
    assert_eq!(st.args.len(), 1);
    assert!(
        matches!(&st.args[0], Arg::Text(Some(j)) if j == r#"[["a",1,2],["b",1,2]]"#),
        "{:?}",
        st.args[0]
    );
    let st = d.write(Mode::Set, &[&a, &b], false, &facts);
    assert_eq!(
        st.sql,
        "UPDATE `posts` JOIN (SELECT CAST(? AS CHAR CHARACTER SET utf8mb4) COLLATE utf8mb4_unicode_ci AS k0, \
         ? AS c0, ? AS c1 UNION ALL SELECT ?, ?, ?) AS wb_src ON `posts`.`id` = wb_src.k0 \
         SET `posts`.`views` = wb_src.c0, `posts`.`likes` = wb_src.c1"
    );
    assert_eq!(st.args.len(), 6);
}

/// `text` stays the only place in this crate that vouches for SQL.
#[test]
fn only_this_file_asserts_sql_is_safe() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut dirs = vec![src.clone()];
    // Spelt in two halves, so this file does not match itself.
    let needle = concat!("AssertSql", "Safe");
    let mut found = Vec::new();
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.contains(needle) {
                let rel = path.strip_prefix(&src).unwrap_or(&path);
                found.push(Some(rel.to_string_lossy().into_owned()));
            }
        }
    }
    assert_eq!(found, vec![Some("sql.rs".to_owned())]);
}
