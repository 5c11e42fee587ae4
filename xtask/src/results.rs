//! Test results: libtest's counts, how one run of test executables ended,
//! and a writer that streams output while keeping a copy to count.

use anyhow::Result;
use std::io::Write;
use std::sync::{Arc, Mutex};

/// Passed and failed counts from libtest's `test result:` lines.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Counts {
    pub passed: u64,
    pub failed: u64,
}

impl Counts {
    pub fn parse(text: &str) -> Counts {
        let mut c = Counts::default();
        for line in text
            .lines()
            .filter(|l| l.trim_start().starts_with("test result:"))
        {
            let num = |word: &str| {
                line.split(';')
                    .find_map(|part| part.trim().strip_suffix(word).map(str::trim))
                    .and_then(|n| n.rsplit(' ').next())
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            c.passed += num("passed");
            c.failed += num("failed");
        }
        c
    }

    pub fn add(&mut self, o: Counts) {
        self.passed += o.passed;
        self.failed += o.failed;
    }
}

/// Streams the guest's stdout to ours and keeps a copy to count results.
pub struct Tee(pub Arc<Mutex<Vec<u8>>>);

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        std::io::stdout().write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().flush()
    }
}

/// How one guest's tests ended.
pub enum Verdict {
    Passed(Counts),
    Failed { exit: i32, counts: Counts },
    GuestFailed(String),
}

impl Verdict {
    pub fn of(result: Result<i32>, counts: Counts) -> Self {
        match result {
            Ok(0) => Verdict::Passed(counts),
            Ok(exit) => Verdict::Failed { exit, counts },
            Err(e) => Verdict::GuestFailed(format!("{e:#}")),
        }
    }

    pub fn passed(&self) -> bool {
        matches!(self, Verdict::Passed(_))
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Passed(c) => write!(f, "ok ({} passed)", c.passed),
            Verdict::Failed { exit, counts } => write!(
                f,
                "FAILED (exit {exit}; {} passed, {} failed)",
                counts.passed, counts.failed
            ),
            Verdict::GuestFailed(why) => write!(f, "FAILED ({why})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_libtest_summaries() {
        let text = "test result: ok. 43 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.56s\n\
                    noise\n\
                    test result: FAILED. 2 passed; 9 failed; 0 ignored; 0 measured; 0 filtered out\n";
        assert_eq!(
            Counts::parse(text),
            Counts {
                passed: 45,
                failed: 9
            }
        );
        assert_eq!(Counts::parse("nothing"), Counts::default());
    }
}
