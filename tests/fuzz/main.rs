//! `persona-bus-fuzz [--secs N] [--seed N] [TARGET...]`: fuzzes every
//! parser that takes outside input (`persona_bus_tests::fuzz`) for N
//! seconds each (default 600: `make fuzz`), prints a line per target, and
//! exits 1 with the crashing inputs if any parser panicked or hung.

use persona_bus_tests::fuzz;
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(|v| v.parse::<u64>().expect("a number"))
    };
    let secs = value("--secs").unwrap_or(600);
    let seed = value("--seed").unwrap_or_else(|| fastrand::u64(..));
    let named: Vec<&str> = args
        .iter()
        .enumerate()
        .filter(|(i, a)| !a.starts_with("--") && (*i == 0 || !args[i - 1].starts_with("--")))
        .map(|(_, a)| a.as_str())
        .collect();
    println!("fuzzing for {secs} s per target, seed {seed}");
    let mut failed = false;
    // Known crashes first: each must stay fixed.
    for (name, input) in fuzz::REGRESSIONS {
        let target = fuzz::targets()
            .into_iter()
            .find(|t| t.name == *name)
            .expect("a target");
        if std::panic::catch_unwind(|| (target.run)(input)).is_err() {
            println!(
                "REGRESSION {name}: {:?} crashes again",
                String::from_utf8_lossy(input)
            );
            failed = true;
        }
    }
    for target in fuzz::targets() {
        if !named.is_empty() && !named.contains(&target.name) {
            continue;
        }
        let report = fuzz::fuzz(&target, Duration::from_secs(secs), seed);
        println!("{}", report.line());
        for (input, message) in &report.crashes {
            println!(
                "  CRASH {:?}\n    {message}",
                String::from_utf8_lossy(input)
            );
        }
        for (input, took) in &report.slow {
            println!("  SLOW ({took:?}) {:?}", String::from_utf8_lossy(input));
        }
        failed |= !report.crashes.is_empty() || !report.slow.is_empty();
    }
    if failed {
        std::process::exit(1);
    }
}
