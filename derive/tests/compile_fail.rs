//! Mistakes in `#[derive(Record)]` are compile errors that say what to do.
//! Regenerate the expected output with `TRYBUILD=overwrite` after a deliberate
//! change of a message, and read the diff.

#[test]
fn compile_fail() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
