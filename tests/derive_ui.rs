//! Compile-time checks of `#[derive(Event)]` and `#[derive(Validate)]`: each mistake under `ui/` must
//! fail with the error in its `.stderr`. (That a full-featured event compiles is checked by
//! `full_event.rs`, among the derive's run-time tests: here, trybuild would build its dependencies
//! once for it and once more for these, which it only checks.)

#[test]
fn derive_ui() {
    let cases = trybuild::TestCases::new();
    // Paths are relative to the `events-derive` package, where cargo runs this test.
    cases.compile_fail("../tests/ui/*.rs");
}
