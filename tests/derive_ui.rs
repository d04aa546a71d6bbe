//! Compile-time checks of `#[derive(Event)]` and `#[derive(Validate)]`: each mistake under `ui/` must
//! fail with the error in its `.stderr`, and a full-featured event must compile.

#[test]
fn derive_ui() {
    let cases = trybuild::TestCases::new();
    // Paths are relative to the `events-derive` package, where cargo runs this test.
    cases.pass("../tests/ui/pass/*.rs");
    cases.compile_fail("../tests/ui/*.rs");
}
