//! `#[derive(Record)]` through the facade: columns, mapping, and rows both ways.

use serde::{Deserialize, Serialize};
// One import, both namespaces: the trait (`Record::columns()`) and the derive.
use writebehind::Record;
use writebehind::{Column, Merge, SqlType, SqlValue, WriteMode};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The contract's example.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Record)]
#[writebehind(
    table = "posts",
    key(id),
    rename_all = "snake_case",
    version = "version",
    update_only
)]
struct Post {
    title: String,
    #[writebehind(counter)]
    views: i64,
    #[writebehind(column = "like_count", counter)]
    likes: i64,
    #[writebehind(skip)]
    cached_at: Option<u64>,
    note: Option<String>,
}

fn post() -> Post {
    Post {
        title: "hello".into(),
        views: 10,
        likes: 2,
        cached_at: Some(99),
        note: None,
    }
}

#[test]
fn columns_follow_the_fields_in_order_with_their_merge() -> TestResult {
    assert_eq!(
        Post::columns(),
        [
            Column::new("title", SqlType::Text, false)?,
            Column::counter("views")?,
            Column::counter("like_count")?,
            Column::new("note", SqlType::Text, true)?,
        ]
    );
    let merges: Vec<Merge> = Post::columns().iter().map(|c| c.merge).collect();
    assert_eq!(
        merges,
        [Merge::Set, Merge::Counter, Merge::Counter, Merge::Set]
    );
    Ok(())
}

#[test]
fn mapping_has_table_key_version_and_mode() {
    let m = Post::mapping();
    assert_eq!(m.table.as_deref(), Some("posts"));
    assert_eq!(m.key_columns, ["id"]);
    assert_eq!(m.version_column.as_deref(), Some("version"));
    assert_eq!(m.mode, WriteMode::UpdateOnly);
}

#[test]
fn a_row_round_trips_and_skip_comes_back_as_default() {
    let p = post();
    let row = p.to_row();
    assert_eq!(
        row,
        [
            SqlValue::Text("hello".into()),
            SqlValue::Int(10),
            SqlValue::Int(2),
            SqlValue::Null,
        ]
    );
    let back = Post::from_row(row);
    assert_eq!(
        back,
        Ok(Post {
            cached_at: None,
            ..post()
        })
    );
    let noted = Post {
        note: Some("n".into()),
        ..post()
    };
    assert_eq!(
        Post::from_row(noted.to_row()).map(|p| p.note),
        Ok(Some("n".to_owned()))
    );
}

#[test]
fn from_row_names_the_column_of_a_mismatch_or_a_null() {
    let wrong_type = vec![
        SqlValue::Text("t".into()),
        SqlValue::Int(1),
        SqlValue::Text("2".into()),
        SqlValue::Null,
    ];
    assert_eq!(
        Post::from_row(wrong_type),
        Err("column `like_count`: expected BIGINT, found TEXT".to_owned())
    );
    let null = vec![
        SqlValue::Null,
        SqlValue::Int(1),
        SqlValue::Int(2),
        SqlValue::Null,
    ];
    let e = Post::from_row(null).err().unwrap_or_default();
    assert!(e.starts_with("column `title`: NULL"), "{e}");
    assert_eq!(
        Post::from_row(vec![SqlValue::Int(1)]),
        Err("expected 4 columns (title, views, like_count, note), found 1".to_owned())
    );
}

/// No table, no version, a composite key, the default (upsert) mode.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Record)]
#[writebehind(key(tenant, r#type))]
struct Quota {
    used: i32,
}

#[test]
fn defaults_are_the_builders_table_no_version_and_upsert() {
    let m = Quota::mapping();
    assert_eq!(m.table, None);
    assert_eq!(m.key_columns, ["tenant", "type"]);
    assert_eq!(m.version_column, None);
    assert_eq!(m.mode, WriteMode::Upsert);
}

/// Every column type of the contract, plain and optional.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Record)]
#[writebehind(key(id))]
struct AllTypes {
    a: i8,
    b: i16,
    c: i32,
    d: i64,
    e: u8,
    f: u16,
    g: u32,
    h: f32,
    i: f64,
    j: bool,
    k: String,
    l: Vec<u8>,
    m: uuid::Uuid,
    n: time::OffsetDateTime,
    o: chrono::DateTime<chrono::Utc>,
    // bincode (the cache's log) cannot read a serde_json::Value back: as text.
    #[serde(with = "writebehind::__private::json_text")]
    p: serde_json::Value,
    q: Option<i64>,
    r: Option<uuid::Uuid>,
    #[serde(with = "writebehind::__private::json_text")]
    s: Option<serde_json::Value>,
    t: std::option::Option<std::string::String>,
}

fn all_types() -> Result<AllTypes, Box<dyn std::error::Error>> {
    Ok(AllTypes {
        a: -8,
        b: -16,
        c: -32,
        d: i64::MIN,
        e: 255,
        f: 65535,
        g: u32::MAX,
        h: 0.25,
        i: -1.5,
        j: true,
        k: "text".into(),
        l: vec![0, 1, 255],
        m: uuid::Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef),
        // Whole microseconds: what a TIMESTAMP column keeps.
        n: time::OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_000)?,
        o: chrono::DateTime::from_timestamp_micros(-1_234_567).ok_or("range")?,
        p: serde_json::json!({"tags": ["a", "b"], "n": 1}),
        q: Some(7),
        r: None,
        s: Some(serde_json::Value::Null),
        t: None,
    })
}

#[test]
fn every_type_maps_to_its_column_type() {
    use SqlType::*;
    let types: Vec<(SqlType, bool)> = AllTypes::columns()
        .iter()
        .map(|c| (c.ty, c.nullable))
        .collect();
    let want = [
        (BigInt, false),
        (BigInt, false),
        (BigInt, false),
        (BigInt, false),
        (BigInt, false),
        (BigInt, false),
        (BigInt, false),
        (Double, false),
        (Double, false),
        (Bool, false),
        (Text, false),
        (Bytes, false),
        (Uuid, false),
        (Timestamp, false),
        (Timestamp, false),
        (Json, false),
        (BigInt, true),
        (Uuid, true),
        (Json, true),
        (Text, true),
    ];
    assert_eq!(types, want);
    assert!(AllTypes::columns().iter().all(|c| c.merge == Merge::Set));
}

#[test]
fn every_type_round_trips() -> TestResult {
    let v = all_types()?;
    let row = v.to_row();
    assert_eq!(row[12], SqlValue::Uuid(*v.m.as_bytes()));
    assert_eq!(row[13], SqlValue::Timestamp(1_700_000_000_123_456));
    assert_eq!(row[14], SqlValue::Timestamp(-1_234_567));
    assert!(matches!(&row[15], SqlValue::Json(s) if s.contains("tags")));
    // Some(JSON null) is a JSON document, not SQL NULL.
    assert_eq!(row[18], SqlValue::Json("null".into()));
    assert_eq!(AllTypes::from_row(row), Ok(v));
    Ok(())
}

#[test]
fn timestamps_keep_microseconds_floored_and_the_instant() -> TestResult {
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Record)]
    #[writebehind(key(id))]
    struct At {
        at: time::OffsetDateTime,
    }
    // 1 ns before the epoch floors to -1 µs; an offset comes back as UTC, same instant.
    let before = time::OffsetDateTime::from_unix_timestamp_nanos(-1)?;
    assert_eq!(At { at: before }.to_row(), [SqlValue::Timestamp(-1)]);
    let plus2 = time::OffsetDateTime::from_unix_timestamp(1_000)?
        .to_offset(time::UtcOffset::from_hms(2, 0, 0)?);
    let back = At::from_row(At { at: plus2 }.to_row())?;
    assert_eq!(back.at, plus2);
    assert_eq!(back.at.offset(), time::UtcOffset::UTC);
    Ok(())
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Record)]
#[writebehind(key(id), rename_all = "camelCase")]
struct Camel {
    like_count: i64,
    #[writebehind(column = "view_total")]
    view_count: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Record)]
#[writebehind(key(id), rename_all = "PascalCase")]
struct Pascal {
    like_count: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Record)]
#[writebehind(key(id), rename_all = "SCREAMING_SNAKE_CASE")]
struct Screaming {
    like_count: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Record)]
#[writebehind(key(id), rename_all = "lowercase")]
struct Lower {
    like_count: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Record)]
#[writebehind(key(id), rename_all = "UPPERCASE")]
struct Upper {
    like_count: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Record)]
#[writebehind(key(id))]
struct AsWritten {
    like_count: i64,
    r#type: String,
}

fn names<R: Record>() -> Vec<String> {
    R::columns()
        .iter()
        .map(|c| c.name.as_str().to_owned())
        .collect()
}

#[test]
fn rename_all_cases() {
    assert_eq!(names::<Camel>(), ["likeCount", "view_total"]);
    assert_eq!(names::<Pascal>(), ["LikeCount"]);
    assert_eq!(names::<Screaming>(), ["LIKE_COUNT"]);
    assert_eq!(names::<Lower>(), ["like_count"]);
    assert_eq!(names::<Upper>(), ["LIKE_COUNT"]);
    assert_eq!(names::<AsWritten>(), ["like_count", "type"]);
}

/// A delta record: every column a counter, of any integer width.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Record)]
#[writebehind(table = "posts", key(id))]
struct PostCounters {
    #[writebehind(counter)]
    views: i64,
    #[writebehind(counter)]
    likes: u32,
    #[writebehind(skip)]
    seen: std::collections::BTreeSet<String>,
}

#[test]
fn a_delta_record_is_all_counters_and_skips_what_it_must() -> TestResult {
    assert_eq!(
        PostCounters::columns(),
        [Column::counter("views")?, Column::counter("likes")?]
    );
    let delta = PostCounters {
        views: 1,
        likes: 0,
        seen: ["x".to_owned()].into(),
    };
    assert_eq!(delta.to_row(), [SqlValue::Int(1), SqlValue::Int(0)]);
    let back = PostCounters::from_row(delta.to_row())?;
    assert_eq!((back.views, back.likes, back.seen.len()), (1, 0, 0));
    assert_eq!(
        PostCounters::from_row(vec![SqlValue::Int(1), SqlValue::Int(-1)]),
        Err("column `likes`: -1 is out of the range of u32".to_owned())
    );
    Ok(())
}

/// The user's own names cannot capture what the derive generates.
mod shadowing {
    #![allow(dead_code)]
    use ::writebehind::Record;
    use serde::{Deserialize, Serialize};

    type Result<T> = std::result::Result<T, ()>;
    struct Vec;
    struct Option;
    trait Default {}
    struct Column;
    mod writebehind {}

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Record)]
    #[writebehind(table = "t", key(id), version = "version")]
    pub struct Shadowed {
        pub n: i64,
        #[writebehind(skip)]
        pub m: i64,
    }
}

#[test]
fn generated_code_is_hygienic() {
    let s = shadowing::Shadowed { n: 1, m: 2 };
    assert_eq!(
        shadowing::Shadowed::from_row(s.to_row()),
        Ok(shadowing::Shadowed { n: 1, m: 0 })
    );
}

/// `crate = "..."`: a crate that re-exports writebehind under another path.
mod facade {
    pub use writebehind as storage;
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, writebehind::Record)]
#[writebehind(crate = "crate::facade::storage", key(id))]
struct ThroughFacade {
    n: i64,
}

#[test]
fn the_crate_attribute_names_the_facade() {
    assert_eq!(names::<ThroughFacade>(), ["n"]);
}
