//! The aggregation's memory, measured as the process's resident set.
//!
//! One test in a binary of its own, so that no other test shares the
//! process whose RSS is read. Inputs are generated on the fly (nothing is
//! kept per path) and the totals are checked exactly. Run with
//! `cargo test -p cowtrace --test aggregation_memory -- --nocapture` to see
//! the numbers.

use agent_ebpf::{hist_bucket, WriteStats};
use cowtrace::event::{CopyUp, KernelEvent, Kind};
use cowtrace::report;
use cowtrace::stats::{Owner, Stats, WriteTotals, SHOWN};
use std::collections::HashMap;

/// RSS budget for 10,000 containers and 1,000,000 distinct paths.
const BUDGET_MIB: u64 = 64;

/// (VmRSS, VmHWM) in KiB.
fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/self/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// xorshift64*: deterministic inputs without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn owner(i: usize) -> Owner {
    Owner {
        id: format!("{:016x}{:016x}{:016x}{:016x}", i, i * 7, i * 13, i * 31),
        name: format!("app-{i}-worker"),
        image: format!("registry.example/team/service-{}:v1.2.3", i % 50),
        pod: None,
    }
}

fn event(kind: Kind, path: String) -> KernelEvent {
    KernelEvent {
        pid: 4242,
        tid: 4242,
        comm: "worker".into(),
        ..KernelEvent::plain(kind, &path)
    }
}

fn copy_up(ns: u64, bytes: u64, path: String) -> KernelEvent {
    event(
        Kind::CopyUp(CopyUp {
            latency_ns: ns,
            op_latency_ns: Some(ns + ns / 8),
            parents: 0,
            bytes,
            data: bytes > 0,
            kind: cowtrace::event::CopyUpKind::Full,
            ancestor: false,
            removed: false,
            links: 1,
            stack: Vec::new(),
        }),
        path,
    )
}

#[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
struct Expect {
    copy_ups: u64,
    bytes: u64,
    total_ns: u64,
    whiteouts: u64,
    opaque: u64,
}

/// Light paths: each copied up once, 20-200 us. Heavy paths: HEAVY per
/// container, each copied up HEAVY_TIMES times at 1-2 ms, spread through
/// the stream, so that they must survive evictions to be found.
const HEAVY: usize = 3;
const HEAVY_TIMES: usize = 10;

/// Feeds `containers` x `paths_per` light copy-ups plus the heavy ones,
/// whiteouts and opaque dirs; returns what each container should total.
fn feed(stats: &mut Stats, containers: usize, paths_per: usize, seed: u64) -> Vec<Expect> {
    let owners: Vec<Owner> = (0..containers).map(owner).collect();
    let mut expect = vec![Expect::default(); containers];
    let mut rng = Rng(seed);
    // Heavy copy-ups go in at evenly spaced points of each container's
    // light stream.
    let every = (paths_per / (HEAVY * HEAVY_TIMES)).max(1);
    for p in 0..paths_per {
        for (c, o) in owners.iter().enumerate() {
            let e = &mut expect[c];
            let ns = 20_000 + rng.next() % 180_000;
            let bytes = rng.next() % 65_536;
            // Distinct everywhere: container and path number in the name.
            let path = format!("var/lib/service/c{c:05}/data/{:02}/blob-{p:07}.bin", p % 97);
            stats.record(o, &copy_up(ns, bytes, path));
            e.copy_ups += 1;
            e.bytes += bytes;
            e.total_ns += ns;
            if p % every == 0 && p / every < HEAVY * HEAVY_TIMES {
                let h = (p / every) % HEAVY;
                let ns = 1_000_000 + rng.next() % 1_000_000;
                stats.record(o, &copy_up(ns, 4096, format!("usr/lib/hot/lib{h}.so")));
                e.copy_ups += 1;
                e.bytes += 4096;
                e.total_ns += ns;
            }
            if rng.next().is_multiple_of(8) {
                stats.record(
                    o,
                    &event(
                        Kind::Whiteout {
                            cause: cowtrace::event::WhiteoutCause::Unlink,
                        },
                        format!("tmp/x{p}"),
                    ),
                );
                e.whiteouts += 1;
            }
            if rng.next().is_multiple_of(64) {
                stats.record(o, &event(Kind::OpaqueDir, format!("cache/d{p}")));
                e.opaque += 1;
            }
        }
    }
    expect
}

/// What the kernel's write map would give each container per interval.
fn writes(containers: usize) -> HashMap<Owner, WriteTotals> {
    let mut k: WriteStats = unsafe { std::mem::zeroed() };
    for v in [900u64, 1_500, 3_000, 12_000, 250_000] {
        k.buckets[hist_bucket(v)] += 10;
        k.count += 10;
        k.timed += 10;
        k.bytes += 40_960;
    }
    (0..containers)
        .map(|i| {
            let mut w = WriteTotals::default();
            w.add_kernel(&k);
            (owner(i), w)
        })
        .collect()
}

/// Exact totals, and the heavy paths first in every container's list.
fn check(stats: &Stats, expect: &[Expect]) {
    assert_eq!(stats.owners.len(), expect.len());
    for (i, want) in expect.iter().enumerate() {
        let s = &stats.owners[&owner(i)];
        let have = Expect {
            copy_ups: s.copy_up_count,
            bytes: s.copy_up_bytes,
            total_ns: s.files.total().total_ns,
            whiteouts: s.whiteouts,
            opaque: s.opaque_dirs,
        };
        assert_eq!(have, *want, "container {i}");
        assert_eq!(s.copy_up.len(), want.copy_ups);
        assert_eq!(s.copy_up_op.len(), want.copy_ups);
        let top = s.files.top(SHOWN);
        let mut heads: Vec<&str> = top[..HEAVY].iter().map(|e| &*e.path).collect();
        heads.sort();
        let hot: Vec<String> = (0..HEAVY)
            .map(|h| format!("usr/lib/hot/lib{h}.so"))
            .collect();
        assert_eq!(heads, hot, "container {i}: {top:?}");
        for e in &top[..HEAVY] {
            // The heavy paths were tracked from their first copy-up.
            assert_eq!(e.cost.count, HEAVY_TIMES as u64, "container {i}: {e:?}");
        }
        let mut sum = s.files.other(SHOWN);
        for e in &top {
            sum.count += e.cost.count;
            sum.total_ns += e.cost.total_ns;
            sum.bytes += e.cost.bytes;
        }
        assert_eq!(sum, s.files.total(), "container {i}: rows + other");
        assert_eq!(sum.count, want.copy_ups);
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[test]
fn aggregation_memory_is_bounded_and_totals_exact() {
    let (base, _) = rss_kib();

    // A busy node: 200 containers x 500 paths.
    let mut small = Stats::default();
    let expect = feed(&mut small, 200, 500, 1);
    check(&small, &expect);
    let w = writes(200);
    let rows = small.rows(&w);
    let mut json_bytes = 0;
    for (o, s, w) in &rows {
        json_bytes += report::container_json(o, s, w).to_string().len();
    }
    let (rss, _) = rss_kib();
    println!(
        "200 containers x 500 paths: RSS +{:.1} MiB (from {:.1} MiB), heap {:.2} MiB \
         ({} B per container), JSON containers {:.1} KiB",
        mib(rss.saturating_sub(base)),
        mib(base),
        small.heap_bytes() as f64 / 1048576.0,
        small.heap_bytes() / 200,
        json_bytes as f64 / 1024.0
    );
    drop(rows);
    drop(small);

    // 10,000 containers and 1,000,000 distinct light paths (+ 30,000 heavy
    // copy-ups), then a snapshot with writes, rendered one container at a
    // time as the agent does each interval.
    let mut big = Stats::default();
    let expect = feed(&mut big, 10_000, 100, 2);
    let distinct: u64 = expect.iter().map(|e| e.copy_ups).sum();
    assert_eq!(distinct, 10_000 * (100 + (HEAVY * HEAVY_TIMES) as u64));
    check(&big, &expect);
    let w = writes(10_000);
    let rows = big.rows(&w);
    assert_eq!(rows.len(), 10_000);
    let mut rendered = 0;
    for (o, s, w) in &rows {
        let v = report::container_json(o, s, w);
        assert_eq!(v["copy_up"]["count"], s.copy_up_count);
        assert!(v["top_files_other"]["count"].as_u64().unwrap() > 0);
        rendered += 1;
    }
    assert_eq!(rendered, 10_000);
    drop(rows);
    let heap = big.heap_bytes();
    let (rss, hwm) = rss_kib();
    println!(
        "10,000 containers, 1,000,000 paths: RSS {:.1} MiB, peak {:.1} MiB (baseline {:.1}), \
         heap {:.1} MiB ({} B per container)",
        mib(rss),
        mib(hwm),
        mib(base),
        heap as f64 / 1048576.0,
        heap / 10_000
    );
    assert!(
        hwm < BUDGET_MIB * 1024,
        "peak RSS {:.1} MiB over {BUDGET_MIB} MiB",
        mib(hwm)
    );

    // Every container exits: compact entries keep the totals.
    for i in 0..10_000 {
        assert!(big.compact(&owner(i)));
    }
    check(&big, &expect);
    let compact = big.heap_bytes();
    println!(
        "after compact: heap {:.1} MiB ({} B per container)",
        compact as f64 / 1048576.0,
        compact / 10_000
    );
    assert!(compact < heap / 2, "compact {compact} vs {heap}");
}
