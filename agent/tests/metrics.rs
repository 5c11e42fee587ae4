//! The `/metrics` endpoint on the host: the HTTP server on a real socket,
//! each format as asked for, and the classic exposition checked by the
//! real `promtool` (Debian's `prometheus` package, installed by `cargo
//! xtask setup`). The numbers from a real kernel are checked by the Docker
//! guest test `prometheus_scrapes_what_the_json_says`.

use cowtrace::metrics::{encode, Format, Snapshot};
use cowtrace::metrics_server::{bind, serve, Shared};
use cowtrace::stats::{Owner, OwnerStats, WriteTotals};
use std::io::{Read, Write};
use std::process::{Command, Stdio};

fn snapshot() -> Snapshot {
    let hostile = Owner {
        id: "0123456789ab".into(),
        name: "we\"ird\\name\nx".into(),
        image: "img:latest".into(),
        pod: None,
    };
    let in_pod = Owner {
        id: "c0ffee".into(),
        name: "app".into(),
        image: String::new(),
        pod: Some(cowtrace::kube::Pod {
            name: "web".into(),
            namespace: "shop".into(),
        }),
    };
    let host = Owner::host();
    let mut s = OwnerStats::default();
    for (ns, bytes) in [(40_000, 0), (2_000_000, 4096), (3_000_000, 1 << 20)] {
        s.copy_up_count += 1;
        s.copy_up_bytes += bytes;
        s.copy_up.record(ns);
    }
    s.whiteouts = 2;
    s.opaque_dirs = 1;
    let mut w = WriteTotals {
        count: 10,
        bytes: 1000,
        timed: 10,
        ..Default::default()
    };
    w.latency.record_n(1500, 10);
    let empty = OwnerStats::default();
    let none = WriteTotals::default();
    let rows = vec![
        (&hostile, &s, &w),
        (&in_pod, &s, &w),
        (&host, &empty, &none),
    ];
    let mut snap = Snapshot::started(12, 0.8);
    snap.update(
        &rows,
        &[
            ("copy_up".to_string(), 0),
            ("whiteout".to_string(), 3),
            ("map_full_writes".to_string(), 0),
        ],
        &Default::default(),
    );
    snap
}

#[test]
fn containers_gone_long_enough_have_no_series() {
    let gone = Owner {
        id: "feed".into(),
        name: "gone".into(),
        image: String::new(),
        pod: None,
    };
    let (s, w) = (OwnerStats::default(), WriteTotals::default());
    let rows = vec![(&gone, &s, &w)];
    let mut snap = Snapshot::default();
    snap.update(&rows, &[], &Default::default());
    assert!(encode(&snap, Format::Classic).contains("container=\"gone\""));
    snap.update(&rows, &[], &["feed".to_string()].into());
    assert!(!encode(&snap, Format::Classic).contains("container=\"gone\""));
}

#[test]
fn promtool_accepts_the_classic_exposition() {
    let text = encode(&snapshot(), Format::Classic);
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; `cargo xtask setup` installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    // The hostile name is one escaped label value, not a broken line.
    assert!(text.contains(r#"container="we\"ird\\name\nx""#), "{text}");
    assert!(text.contains("cowtrace_copy_up_seconds_count{container=\"host\""));
    // A pod's container has pod and namespace; others have neither.
    assert!(text.contains(
        r#"cowtrace_whiteouts_total{container="app",container_id="c0ffee",image="",pod="web",namespace="shop"} 2"#
    ), "{text}");
    assert!(
        !text.contains(r#"container="host",container_id="host",image="",pod"#),
        "{text}"
    );
    assert!(text.contains("cowtrace_dropped_events_total{kind=\"whiteout\"} 3"));
}

fn get(port: u16, method: &str, path: &str, accept: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
}

#[test]
fn the_server_answers_in_the_format_asked_for() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let shared: Shared = Default::default();
    *shared.lock().unwrap() = snapshot();
    let port = rt.block_on(async {
        let l = bind("127.0.0.1:0").await.unwrap();
        let port = l.addr.port();
        serve(l, shared.clone());
        port
    });
    let classic = get(port, "GET", "/metrics", "*/*");
    assert!(classic.starts_with("HTTP/1.1 200"), "{classic}");
    assert!(classic.contains("text/plain; version=0.0.4"), "{classic}");
    assert!(!classic.contains("# EOF"), "{classic}");
    let om = get(
        port,
        "GET",
        "/metrics",
        "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
    );
    assert!(om.contains("application/openmetrics-text"), "{om}");
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(get(port, "GET", "/nope", "*/*").starts_with("HTTP/1.1 404"));
    let post = get(port, "POST", "/metrics", "*/*");
    assert!(post.starts_with("HTTP/1.1 405"), "{post}");
    // A port in use is one line naming the flag.
    let taken = format!("127.0.0.1:{port}");
    let err = rt.block_on(bind(&taken)).err().unwrap();
    assert!(
        err.starts_with(&format!("--metrics {taken}: cannot listen")),
        "{err}"
    );
    let bad = rt.block_on(bind("nine")).err().unwrap();
    assert!(bad.contains("not an address"), "{bad}");
}
