//! Rounds, positions and key order.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use writebehind_core::{Key, Value};

use super::chunks::{chunk_bounds, key_order, passes, sort_rows};
use super::readback::{by_ordinal, Back};
use crate::rows::WRow;
use crate::schema::SqlValue;
use crate::sql::RowData;

fn row(idx: usize, key: &str, k: i64) -> WRow {
    WRow {
        idx,
        data: RowData {
            key: Key::from(key),
            kvals: vec![SqlValue::Int(k)],
            cols: Vec::new(),
        },
        report: Value::Int(0),
        version_after: None,
    }
}

/// Two texts of one key value land in different passes, in cut order.
#[test]
fn passes_split_equal_key_values() {
    let rows = vec![
        row(0, "1", 1),
        row(1, "2", 2),
        row(2, "01", 1),
        row(3, "001", 1),
    ];
    let idx: Vec<Vec<usize>> = passes(rows)
        .iter()
        .map(|r| r.iter().map(|w| w.idx).collect())
        .collect();
    assert_eq!(idx, vec![vec![0, 1], vec![2], vec![3]]);
    let one = passes(vec![row(0, "1", 1), row(1, "2", 2)]);
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].len(), 2);
}

/// Positions map returned columns to rows; rows not returned stay `None`.
#[test]
fn ordinals_align_returned_columns() {
    let cols = vec![
        vec![SqlValue::Int(3), SqlValue::Int(1), SqlValue::Int(9)],
        vec![SqlValue::Null, SqlValue::Null, SqlValue::Null],
        vec![SqlValue::Int(30), SqlValue::Int(10), SqlValue::Int(90)],
        vec![SqlValue::Int(31), SqlValue::Int(11), SqlValue::Int(91)],
    ];
    let back = by_ordinal(3, cols);
    let want = |a: i64, b: i64| {
        Some(Back {
            version: None,
            totals: Arc::from(vec![a, b]),
        })
    };
    assert_eq!(back, vec![want(10, 11), None, want(30, 31)]);
    assert_eq!(by_ordinal(2, Vec::new()), vec![None, None]);
}

/// Integer keys sort by value, not by text.
#[test]
fn key_order_follows_key_values() {
    let mut rows = [row(0, "10", 10), row(1, "9", 9), row(2, "100", 100)];
    rows.sort_unstable_by(key_order);
    let keys: Vec<&str> = rows.iter().map(|r| &*r.data.key).collect();
    assert_eq!(keys, vec!["9", "10", "100"]);
}

/// The integer-key sort gives the order of `key_order`, every row kept once;
/// other keys take the general sort.
#[test]
fn sorting_by_integer_ids_keeps_key_order() {
    let ids: Vec<i64> = (0..500i64).map(|i| (i * 7_919) % 1_009 - 500).collect();
    let mut rows: Vec<WRow> = ids
        .iter()
        .enumerate()
        .map(|(i, &k)| row(i, &k.to_string(), k))
        .collect();
    let mut want = rows.clone();
    want.sort_unstable_by(key_order);
    sort_rows(&mut rows);
    let idx = |rs: &[WRow]| rs.iter().map(|r| r.idx).collect::<Vec<_>>();
    assert_eq!(idx(&rows), idx(&want));
    let mut texts = vec![row(0, "b", 0), row(1, "a", 0)];
    for r in &mut texts {
        r.data.kvals = vec![SqlValue::Text(r.data.key.to_string())];
    }
    sort_rows(&mut texts);
    assert_eq!(idx(&texts), vec![1, 0]);
}

/// Full chunks first; with `stable`, the rest in falling powers of two (a
/// statement text seen before), every row in exactly one chunk.
#[test]
fn chunk_bounds_cover_every_row_once() {
    assert_eq!(
        chunk_bounds(12_394, 5_000, true),
        vec![
            (0, 5_000),
            (5_000, 10_000),
            (10_000, 12_048),
            (12_048, 12_304),
            (12_304, 12_368),
            (12_368, 12_384),
            (12_384, 12_392),
            (12_392, 12_394),
        ]
    );
    assert_eq!(
        chunk_bounds(12_394, 5_000, false),
        vec![(0, 5_000), (5_000, 10_000), (10_000, 12_394)]
    );
    assert_eq!(
        chunk_bounds(10_000, 5_000, true),
        vec![(0, 5_000), (5_000, 10_000)]
    );
    assert_eq!(chunk_bounds(1, 5_000, true), vec![(0, 1)]);
    assert_eq!(chunk_bounds(0, 5_000, true), Vec::<(usize, usize)>::new());
    for n in 0..300 {
        for per in [1, 2, 7, 64, 100] {
            let b = chunk_bounds(n, per, true);
            let mut next = 0;
            for &(lo, hi) in &b {
                assert_eq!(lo, next);
                assert!(hi > lo && hi - lo <= per, "{n} {per} {b:?}");
                next = hi;
            }
            assert_eq!(next, n);
        }
    }
}
