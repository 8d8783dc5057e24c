//! Compile-fail tests: misuse of `#[derive(Event)]` gives a clear error
//! pointing at the offending tokens. The expected messages are the `.stderr`
//! files beside each case in `tests/ui/`.

#[test]
fn misuse_is_a_compile_error() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
