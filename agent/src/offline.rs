//! `cowtrace report`: a saved `--json` report (or two, compared) rendered
//! on the terminal and, with `--html`, as a page of plots. No root, no
//! kernel: only files.

use crate::compare;
use crate::output::err_line;
use crate::render::{html, terminal};
use crate::report::read::{self, Run};
use std::io::Write;
use std::path::{Path, PathBuf};

pub const EXAMPLES: &str = "\
Examples:
  cowtrace report cow.json                                 summary, histograms and top files
  cowtrace report cow.json --html cow.html                 the same with plots, in one file
  cowtrace report cow.json --events events.ndjson --html cow.html   plus a copy-up timeline
  cowtrace report before.json --compare after.json         what an image change did
  cowtrace report before.json --compare after.json --fail-if-worse 10   for CI

Exit status: 0 done, 2 unreadable, malformed or other-schema input or an
unwritable --html file, 3 with --fail-if-worse when a copy-up metric of a
matched container (count, bytes, total time, p50, p99) grew by more than
PCT percent (latencies: and by more than the histograms' resolution).";

#[derive(clap::Args, Debug)]
#[command(after_help = EXAMPLES)]
pub struct ReportArgs {
    /// A report written by `cowtrace --json`, e.g. cow.json
    #[arg(value_name = "RUN.json")]
    pub run: PathBuf,
    /// Compare RUN.json (before) with this report (after), e.g. --compare after.json
    #[arg(long, value_name = "AFTER.json")]
    pub compare: Option<PathBuf>,
    /// Also write one self-contained HTML page with plots, e.g. --html report.html
    #[arg(long, value_name = "OUT.html")]
    pub html: Option<PathBuf>,
    /// RUN.json's events (`cowtrace --events`) for a copy-up timeline in the HTML page
    #[arg(long, value_name = "EVENTS.ndjson", conflicts_with = "compare")]
    pub events: Option<PathBuf>,
    /// With --compare: exit 3 when a copy-up metric got worse by more than PCT percent, e.g. --fail-if-worse 10
    #[arg(long, value_name = "PCT", requires = "compare", value_parser = parse_pct)]
    pub fail_if_worse: Option<f64>,
}

fn parse_pct(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("not a percentage: {s:?} (try 10)"))?;
    if !(v.is_finite() && v >= 0.0) {
        return Err(format!("percentage must be 0 or more: {s:?}"));
    }
    Ok(v)
}

/// Runs the command; returns the exit status. Errors are one line on
/// stderr.
pub fn run(args: &ReportArgs) -> u8 {
    match run_inner(args) {
        Ok(code) => code,
        Err(msg) => {
            err_line(&format!("cowtrace: {msg}"));
            2
        }
    }
}

/// Text to stdout; a closed stdout is not an error.
fn print(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|_| out.flush());
}

fn load(p: &Path) -> Result<Run, String> {
    read::load(p).map_err(|e| e.to_string())
}

fn run_inner(args: &ReportArgs) -> Result<u8, String> {
    let before = load(&args.run)?;
    let events = match &args.events {
        Some(p) => Some(read::load_events(p).map_err(|e| e.to_string())?),
        None => None,
    };
    let mut code = 0;
    let page = match &args.compare {
        None => {
            print(&terminal::report(&before));
            args.html
                .as_ref()
                .map(|_| html::report(&before, events.as_deref()))
        }
        Some(after_path) => {
            let after = load(after_path)?;
            let pairs = compare::match_containers(&before, &after);
            print(&terminal::comparison(&before, &after, &pairs));
            if let Some(pct) = args.fail_if_worse {
                let worse = compare::worse(&pairs, pct);
                for w in &worse {
                    err_line(&format!("cowtrace: worse: {w}"));
                }
                if !worse.is_empty() {
                    code = 3;
                }
            }
            args.html
                .as_ref()
                .map(|_| html::comparison(&before, &after, &pairs))
        }
    };
    if let (Some(path), Some(page)) = (&args.html, page) {
        std::fs::write(path, page).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        err_line(&format!("cowtrace: wrote {}", path.display()));
    }
    Ok(code)
}
