//! The control protocol between a guest's init and the host: the marker
//! lines the init writes to the control port (ttyS3), defined once here.
//! The init scripts see them as shell variables ([`shell_definitions`]) and
//! the host parses them with [`Control`].

use std::time::Duration;

/// Serial ports: ttyS0 is the kernel console (log only), ttyS1 the
/// command's stdout, ttyS2 its stderr, ttyS3 the control lines below.
pub const CONTROL_PORT: &str = "/dev/ttyS3";
pub const STDOUT_PORT: &str = "/dev/ttyS1";
pub const STDERR_PORT: &str = "/dev/ttyS2";

/// The Docker engine answers (Docker guests only).
pub const READY: &str = "COWTRACE-READY";
/// The command starts.
pub const START: &str = "COWTRACE-START";
/// `COWTRACE-FAIL <why>`: the init failed before the command.
pub const FAIL: &str = "COWTRACE-FAIL";
/// Around the base64 tar of the guest's /out.
pub const OUT_BEGIN: &str = "COWTRACE-OUT-BEGIN";
pub const OUT_END: &str = "COWTRACE-OUT-END";
/// `COWTRACE-EXIT <status>`: the command's exit status.
pub const EXIT: &str = "COWTRACE-EXIT";

/// Shell variable assignments the init scripts use instead of spelling
/// the markers and ports themselves.
pub fn shell_definitions() -> String {
    [
        ("C", CONTROL_PORT),
        ("OUT_PORT", STDOUT_PORT),
        ("ERR_PORT", STDERR_PORT),
        ("M_READY", READY),
        ("M_START", START),
        ("M_FAIL", FAIL),
        ("M_OUT_BEGIN", OUT_BEGIN),
        ("M_OUT_END", OUT_END),
        ("M_EXIT", EXIT),
    ]
    .iter()
    .map(|(k, v)| format!("{k}={v}\n"))
    .collect()
}

/// What the host has read from the control port so far.
#[derive(Default)]
pub struct Control {
    partial: Vec<u8>,
    in_out: bool,
    pub out_b64: Vec<u8>,
    pub out_done: bool,
    pub exit: Option<i32>,
    pub fail: Option<String>,
    /// When (since boot) `START` and `READY` were seen.
    pub start: Option<Duration>,
    pub ready: Option<Duration>,
}

impl Control {
    /// Feed bytes read from the control port at time `now`.
    pub fn feed(&mut self, data: &[u8], now: Duration) {
        self.partial.extend_from_slice(data);
        while let Some(pos) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=pos).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_matches(|c: char| c.is_whitespace() || c == '\0');
            if self.in_out {
                if line == OUT_END {
                    self.in_out = false;
                    self.out_done = true;
                } else {
                    self.out_b64.extend_from_slice(line.as_bytes());
                }
            } else if line == OUT_BEGIN {
                self.in_out = true;
            } else if line == START {
                self.start.get_or_insert(now);
            } else if line == READY {
                self.ready.get_or_insert(now);
            } else if let Some(rc) = strip_marker(line, EXIT) {
                self.exit = rc.parse().ok().or(Some(125));
            } else if let Some(why) = strip_marker(line, FAIL) {
                self.fail.get_or_insert(why.to_string());
            }
        }
    }
}

/// `"MARKER rest"` -> `Some("rest")`.
fn strip_marker<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    line.strip_prefix(marker)?.strip_prefix(' ').map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_lines() {
        let mut c = Control::default();
        let t = Duration::from_secs(1);
        c.feed(b"COWTRACE-READY\nCOWTRACE-START\r\nCOWTRACE-OUT-BEGIN\nYWJj\nCOWTRACE-OUT-END\nCOWTRACE-EX", t);
        assert_eq!(c.ready, Some(t));
        assert_eq!(c.start, Some(t));
        assert!(c.out_done);
        assert_eq!(c.out_b64, b"YWJj");
        assert_eq!(c.exit, None);
        c.feed(b"IT 3\n", t);
        assert_eq!(c.exit, Some(3));
        c.feed(b"COWTRACE-FAIL no /dev/vda\nCOWTRACE-EXIT x\n", t);
        assert_eq!(c.fail.as_deref(), Some("no /dev/vda"));
        assert_eq!(c.exit, Some(125));
    }
}
