//! Compile-time behaviour of `#[job]`: what compiles, and the error each
//! misuse gets. Cases live in `ui/pass` and `ui/fail`, one scenario per
//! file; regenerate the `.stderr` snapshots with `TRYBUILD=overwrite`.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("ui/pass/*.rs");
    t.compile_fail("ui/fail/*.rs");
}
