//! A short fuzzing run of every parser that takes outside input
//! (`persona_bus_tests::fuzz`; `make fuzz` runs each for 10 minutes), in a
//! process of its own (it silences the panic hook while it runs).

use std::process::Command;

#[test]
fn no_parser_of_outside_input_panics() {
    let out = Command::new(env!("CARGO_BIN_EXE_persona-bus-fuzz"))
        .args(["--secs", "2"])
        .output()
        .expect("run persona-bus-fuzz");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "a parser crashed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().filter(|l| l.contains(" execs in ")).count(),
        persona_bus_tests::fuzz::targets().len(),
        "{stdout}"
    );
}
