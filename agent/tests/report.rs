//! `cowtrace report` as a person meets it: the binary run on real demo
//! reports (agent/tests/data), its terminal text and exit codes, and its
//! HTML pages opened in headless Chromium: no page error, every expected
//! plot present with data in it, and screenshots in light and dark mode
//! that are not blank and show the plots' colours.
//!
//! Chromium comes from Debian's `chromium` package, which `cargo xtask
//! setup` installs; without it these tests fail (they do not skip).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");

fn data(name: &str) -> String {
    format!("{DATA}/{name}")
}

fn out_dir(test: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("report")
        .join(test);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn cowtrace(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cowtrace"))
        .args(args)
        .output()
        .expect("run cowtrace")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn assert_one_line_error(o: &Output, code: i32, needle: &str) {
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(code), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(needle), "expected {needle:?} in {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn report_prints_the_exit_summary_from_a_saved_file() {
    let o = cowtrace(&["report", &data("demo-before.json")]);
    let out = text(&o.stdout);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(out.contains("--- cowtrace report:"), "{out}");
    assert!(out.contains("CONTAINER         COPYUPS"), "{out}");
    assert!(out.contains("nginx ("), "{out}");
    assert!(out.contains("copy-up vs write latency"), "{out}");
    assert!(out.contains("var/log/nginx/archive.log"), "{out}");
}

#[test]
fn bad_input_is_one_line_and_exit_2() {
    let dir = out_dir("bad_input");
    let v2 = dir.join("v2.json");
    let demo = std::fs::read_to_string(data("demo-before.json")).unwrap();
    std::fs::write(&v2, demo.replacen("cowtrace/v1", "cowtrace/v2", 1)).unwrap();
    assert_one_line_error(
        &cowtrace(&["report", v2.to_str().unwrap()]),
        2,
        "schema \"cowtrace/v2\" is not supported",
    );
    let cut = dir.join("cut.json");
    std::fs::write(&cut, &demo[..demo.len() / 3]).unwrap();
    assert_one_line_error(
        &cowtrace(&["report", cut.to_str().unwrap()]),
        2,
        "invalid JSON",
    );
    assert_one_line_error(
        &cowtrace(&["report", "/nonexistent/r.json"]),
        2,
        "/nonexistent/r.json: No such file",
    );
    assert_one_line_error(
        &cowtrace(&[
            "report",
            &data("demo-before.json"),
            "--html",
            "/proc/cowtrace-nope/r.html",
        ]),
        2,
        "cannot write /proc/cowtrace-nope/r.html",
    );
    let o = cowtrace(&["report", &data("demo-before.json"), "--fail-if-worse", "5"]);
    assert_eq!(o.status.code(), Some(2), "needs --compare");
}

#[test]
fn compare_exits_0_and_fail_if_worse_gates_the_wrong_direction() {
    let (b, a) = (data("demo-before.json"), data("demo-after.json"));
    let o = cowtrace(&["report", &b, "--compare", &a]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(out.contains("nginx (matched by name)"), "{out}");
    assert!(out.lines().any(|l| l.starts_with("copy-up bytes")), "{out}");
    // The improved image is not worse; the change undone is.
    let o = cowtrace(&["report", &b, "--compare", &a, "--fail-if-worse", "10"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let o = cowtrace(&["report", &a, "--compare", &b, "--fail-if-worse", "10"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("cowtrace: worse: nginx: copy-up bytes +"),
        "{}",
        text(&o.stderr)
    );
}

// ---- headless Chromium ----------------------------------------------------

fn chromium() -> &'static str {
    for exe in ["chromium", "chromium-browser"] {
        if Command::new(exe)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            return exe;
        }
    }
    panic!(
        "chromium is not installed: `cargo xtask setup` installs it \
         (apt-get install -y --no-install-recommends chromium)"
    );
}

/// Runs headless Chromium on `page` with `extra` arguments; returns
/// (stdout, stderr). Each run gets its own profile directory.
fn browse(page: &Path, profile: &Path, extra: &[&str]) -> (String, String) {
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
            "--disable-extensions",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(format!("file://{}", page.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium");
    let out = std::thread::spawn({
        let mut so = child.stdout.take().unwrap();
        move || {
            let mut v = Vec::new();
            let _ = std::io::Read::read_to_end(&mut so, &mut v);
            v
        }
    });
    let err = std::thread::spawn({
        let mut se = child.stderr.take().unwrap();
        move || {
            let mut v = Vec::new();
            let _ = std::io::Read::read_to_end(&mut se, &mut v);
            v
        }
    });
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let (o, e) = (text(&out.join().unwrap()), text(&err.join().unwrap()));
            assert!(status.success(), "chromium failed ({status}): {e}");
            return (o, e);
        }
        if start.elapsed() > Duration::from_secs(180) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within 180 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What the page itself reported as errors, and the console lines
/// Chromium logged: both must be empty.
fn page_errors(dom: &str, stderr: &str) -> Vec<String> {
    let mut errs = Vec::new();
    // The inline recorder sets this on <html> once the DOM is loaded.
    match dom
        .split("data-page-errors=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
    {
        Some("0") => {}
        Some(n) => {
            let detail = dom
                .split("id=\"page-errors\">")
                .nth(1)
                .and_then(|s| s.split("</pre>").next())
                .unwrap_or("");
            errs.push(format!("the page recorded {n} errors: {detail}"));
        }
        None => errs.push("the page's error recorder did not run".into()),
    }
    for l in stderr.lines() {
        if l.contains("CONSOLE") || l.contains("Uncaught") || l.contains("Refused to") {
            errs.push(l.to_string());
        }
    }
    errs
}

/// The `<figure data-plot=KIND>` elements of a dumped DOM with their text.
fn figures(dom: &str) -> Vec<(String, String)> {
    dom.split("<figure ")
        .skip(1)
        .filter_map(|f| {
            let kind = f.split("data-plot=\"").nth(1)?.split('"').next()?;
            let body = f.split("</figure>").next()?;
            Some((kind.to_string(), body.to_string()))
        })
        .collect()
}

/// Marks drawn in `color` inside one figure's SVG: filled rectangles with
/// a non-zero area, polylines with more than two points, circles.
fn data_marks(svg: &str, color: &str) -> usize {
    svg.split('<')
        .filter(|el| el.contains(&format!("=\"{color}\"")))
        .filter(|el| {
            let attr = |name: &str| {
                el.split(&format!(" {name}=\""))
                    .nth(1)
                    .and_then(|s| s.split('"').next())
                    .and_then(|v| v.parse::<f64>().ok())
            };
            if el.starts_with("rect") {
                attr("width").unwrap_or(0.0) > 0.0 && attr("height").unwrap_or(0.0) > 0.0
            } else if el.starts_with("polyline") {
                el.split(" points=\"")
                    .nth(1)
                    .map(|p| p.split('"').next().unwrap_or("").split_whitespace().count() > 2)
                    .unwrap_or(false)
            } else {
                el.starts_with("circle")
            }
        })
        .count()
}

/// Decoded screenshot: (width, height, RGB pixels).
fn screenshot(path: &Path) -> (u32, u32, Vec<[u8; 3]>) {
    let decoder = png::Decoder::new(std::fs::File::open(path).expect("screenshot written"));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let step = info.color_type.samples();
    assert!(
        step >= 3,
        "unexpected PNG colour type {:?}",
        info.color_type
    );
    let px = buf[..info.buffer_size()]
        .chunks(step)
        .map(|c| [c[0], c[1], c[2]])
        .collect();
    (info.width, info.height, px)
}

fn near(a: [u8; 3], b: [u8; 3], tol: i32) -> bool {
    a.iter()
        .zip(b)
        .all(|(x, y)| (*x as i32 - y as i32).abs() <= tol)
}

fn rgb(hex: &str) -> [u8; 3] {
    let v = u32::from_str_radix(hex.trim_start_matches('#'), 16).unwrap();
    [(v >> 16) as u8, (v >> 8) as u8, v as u8]
}

struct Look {
    background: [u8; 3],
    non_background: f64,
    colour_pixels: Vec<usize>,
}

/// The most common colour, the share of other pixels, and how many
/// pixels are close to each of `colours`.
fn look(path: &Path, colours: &[&str]) -> Look {
    let (w, h, px) = screenshot(path);
    assert!(w >= 1000 && h >= 1000, "{w}x{h}");
    let mut counts = std::collections::HashMap::new();
    for p in &px {
        *counts.entry(*p).or_insert(0usize) += 1;
    }
    let background = *counts.iter().max_by_key(|(_, n)| **n).unwrap().0;
    let other = px.iter().filter(|p| !near(**p, background, 8)).count();
    Look {
        background,
        non_background: other as f64 / px.len() as f64,
        colour_pixels: colours
            .iter()
            .map(|c| px.iter().filter(|p| near(**p, rgb(c), 24)).count())
            .collect(),
    }
}

fn luminance(c: [u8; 3]) -> f64 {
    0.2126 * c[0] as f64 + 0.7152 * c[1] as f64 + 0.0722 * c[2] as f64
}

/// Opens `page` in Chromium: DOM, errors, expected plots with data in
/// them, and light and dark screenshots that show the data colours.
fn check_in_browser(page: &Path, dir: &Path, expected: &[(&str, &[&str])]) {
    let (dom, stderr) = browse(page, &dir.join("profile-dom"), &["--dump-dom"]);
    let errs = page_errors(&dom, &stderr);
    assert!(errs.is_empty(), "page errors: {errs:#?}");
    let figs = figures(&dom);
    for (kind, colours) in expected {
        let fig = figs
            .iter()
            .find(|(k, _)| k == kind)
            .unwrap_or_else(|| panic!("no {kind} plot in the page"));
        assert!(fig.1.contains("<svg"), "{kind} has no <svg>");
        for c in *colours {
            // One mark is the legend's swatch: data needs more.
            let n = data_marks(&fig.1, c);
            assert!(n >= 2, "{kind}: {n} marks in {c}: an empty plot");
        }
    }
    let colours: Vec<&str> = expected
        .iter()
        .flat_map(|(_, c)| c.iter().copied())
        .collect();
    for (mode, dark) in [("light", false), ("dark", true)] {
        let png = dir.join(format!("{mode}.png"));
        let shot = format!("--screenshot={}", png.display());
        let mut args = vec![shot.as_str(), "--window-size=1280,1800"];
        if dark {
            args.push("--force-dark-mode");
        }
        let (_, stderr) = browse(page, &dir.join(format!("profile-{mode}")), &args);
        let errs = page_errors("data-page-errors=\"0\"", &stderr);
        assert!(errs.is_empty(), "{mode}: {errs:#?}");
        let l = look(&png, &colours);
        let lum = luminance(l.background);
        if dark {
            assert!(lum < 60.0, "dark mode background {:?}", l.background);
        } else {
            assert!(lum > 200.0, "light mode background {:?}", l.background);
        }
        assert!(
            l.non_background > 0.03,
            "{mode}: only {:.3} of the screenshot is not background",
            l.non_background
        );
        for (c, n) in colours.iter().zip(&l.colour_pixels) {
            assert!(*n > 150, "{mode}: {n} pixels of {c} in {}", png.display());
        }
    }
}

const COPY_UP: &str = "#E8590C";
const WRITE: &str = "#1C7ED6";
const BEFORE: &str = "#845EF7";
const AFTER: &str = "#0CA678";

#[test]
fn demo_report_in_a_browser() {
    let dir = out_dir("demo_report_in_a_browser");
    let page = dir.join("report.html");
    let o = cowtrace(&[
        "report",
        &data("demo-before.json"),
        "--events",
        &data("demo-before.events.ndjson"),
        "--html",
        page.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    check_in_browser(
        &page,
        &dir,
        &[
            ("latency-histogram", &[COPY_UP, WRITE]),
            ("latency-cdf", &[COPY_UP, WRITE]),
            ("top-files", &[COPY_UP]),
            ("timeline", &[COPY_UP]),
        ],
    );
}

#[test]
fn demo_comparison_in_a_browser() {
    let dir = out_dir("demo_comparison_in_a_browser");
    let page = dir.join("compare.html");
    let o = cowtrace(&[
        "report",
        &data("demo-before.json"),
        "--compare",
        &data("demo-after.json"),
        "--html",
        page.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    check_in_browser(
        &page,
        &dir,
        &[
            ("compare-copy-up-cdf", &[BEFORE, AFTER]),
            ("compare-copy-up-histogram", &[BEFORE, AFTER]),
            ("compare-write-cdf", &[BEFORE, AFTER]),
            ("compare-top-files", &[BEFORE, AFTER]),
        ],
    );
}

/// The checks above can fail: a page with a script error and an external
/// image is caught, and so is a plot without data.
#[test]
fn the_browser_checks_catch_errors_and_empty_plots() {
    let dir = out_dir("the_browser_checks_catch_errors");
    let page = dir.join("report.html");
    let o = cowtrace(&[
        "report",
        &data("demo-before.json"),
        "--html",
        page.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let html = std::fs::read_to_string(&page).unwrap();
    let broken = html.replacen(
        "</body>",
        "<img src=\"https://cowtrace.invalid/x.png\"><script>noSuchFunction();</script></body>",
        1,
    );
    let bad = dir.join("broken.html");
    std::fs::write(&bad, broken).unwrap();
    let (dom, stderr) = browse(&bad, &dir.join("profile"), &["--dump-dom"]);
    let errs = page_errors(&dom, &stderr);
    assert!(
        errs.iter().any(|e| e.contains("noSuchFunction")),
        "script error not caught: {errs:#?}"
    );
    assert!(
        errs.iter().any(|e| e.contains("cowtrace.invalid")),
        "external fetch not caught: {errs:#?}"
    );
    // A plot stripped of its data marks.
    let figs = figures(&dom);
    let (_, hist) = figs.iter().find(|(k, _)| k == "latency-histogram").unwrap();
    assert!(data_marks(hist, COPY_UP) >= 2);
    let emptied = hist.replace(&format!("fill=\"{COPY_UP}\""), "fill=\"none\"");
    assert_eq!(data_marks(&emptied, COPY_UP), 0);
}
