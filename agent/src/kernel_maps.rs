//! The kernel side's own bookkeeping, read back: how many inserts each map
//! that can fill refused ([`MapFull`], the JSON `drops.map_full`), and how
//! many entries each holds (the JSON `kernel_maps`), so a full map is never
//! a silent loss and a leak would show.

use agent_ebpf::{MapFull, MAP_FULL_KINDS};
use anyhow::{anyhow, Context, Result};
use aya::maps::{Map, MapData, PerCpuArray};
use aya::Ebpf;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

/// Refused inserts, per [`MapFull`] kind (index = kind).
pub type MapFullCounts = [u64; MAP_FULL_KINDS as usize];

/// How full one map is at a moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Occupancy {
    pub kind: MapFull,
    pub entries: u64,
    pub max_entries: u32,
}

/// Handles of its own on the counters and on every map that can fill
/// (duplicated descriptors: `main` takes some of the same maps for reading
/// their contents).
pub struct KernelMaps {
    map_full: PerCpuArray<MapData, u64>,
    maps: Vec<(MapFull, MapData, u32)>,
}

impl KernelMaps {
    pub fn open(ebpf: &Ebpf) -> Result<Self> {
        let counters = Map::PerCpuArray(dup(ebpf, "MAP_FULL")?);
        let map_full = PerCpuArray::try_from(counters).context("MAP_FULL map")?;
        let mut maps = Vec::new();
        for kind in MapFull::ALL {
            let name = kind.map_name();
            let data = dup(ebpf, name)?;
            let info = data.info().with_context(|| format!("{name} map info"))?;
            maps.push((kind, data, info.key_size()));
        }
        Ok(Self { map_full, maps })
    }

    /// Inserts refused so far, summed over CPUs.
    pub fn map_full(&self) -> MapFullCounts {
        let mut n = [0u64; MAP_FULL_KINDS as usize];
        for (i, slot) in n.iter_mut().enumerate() {
            if let Ok(v) = self.map_full.get(&(i as u32), 0) {
                *slot = v.iter().sum();
            }
        }
        n
    }

    /// Entries in each map that can fill, now.
    pub fn occupancy(&self) -> Vec<Occupancy> {
        self.maps
            .iter()
            .map(|(kind, data, key_size)| {
                let max_entries = data.info().map(|i| i.max_entries()).unwrap_or(0);
                Occupancy {
                    kind: *kind,
                    entries: count_keys(data.fd().as_fd(), *key_size, max_entries),
                    max_entries,
                }
            })
            .collect()
    }
}

/// A second descriptor on the map `name` of the loaded object.
fn dup(ebpf: &Ebpf, name: &str) -> Result<MapData> {
    let map = ebpf
        .map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))?;
    let data = match map {
        Map::HashMap(d) | Map::PerCpuHashMap(d) | Map::PerCpuArray(d) | Map::LruHashMap(d) => d,
        _ => return Err(anyhow!("map {name} has an unexpected type")),
    };
    let fd = data
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .with_context(|| format!("duplicating the {name} map's descriptor"))?;
    MapData::from_fd(fd).with_context(|| format!("{name} map"))
}

/// `union bpf_attr` as `BPF_MAP_GET_NEXT_KEY` reads it.
#[repr(C)]
struct NextKeyAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    next_key: u64,
}

const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;

/// Counts the keys of a hash map of any key type (aya's key iterator needs
/// the key's type, and the value types are the kernel side's own). Stops
/// after twice `max_entries` steps: a walk over a map that changes under
/// it may start over, and an estimate is all a gauge needs.
fn count_keys(fd: BorrowedFd<'_>, key_size: u32, max_entries: u32) -> u64 {
    let mut cur = vec![0u8; key_size as usize];
    let mut next = vec![0u8; key_size as usize];
    let mut n = 0u64;
    let limit = 2 * max_entries as u64 + 1;
    while n < limit {
        let attr = NextKeyAttr {
            map_fd: fd.as_raw_fd() as u32,
            _pad: 0,
            key: if n == 0 { 0 } else { cur.as_ptr() as u64 },
            next_key: next.as_mut_ptr() as u64,
        };
        // SAFETY: `attr` points at two live buffers of the map's key size.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_GET_NEXT_KEY,
                &attr as *const NextKeyAttr,
                std::mem::size_of::<NextKeyAttr>() as u32,
            )
        };
        if rc != 0 {
            break;
        }
        n += 1;
        std::mem::swap(&mut cur, &mut next);
    }
    n
}

/// The live view's line for refused inserts, if there were any.
pub fn summary_line(counts: &MapFullCounts) -> Option<String> {
    let parts: Vec<String> = MapFull::ALL
        .iter()
        .filter(|k| counts[**k as usize] > 0)
        .map(|k| format!("{} {}", counts[*k as usize], k.lost()))
        .collect();
    (!parts.is_empty()).then(|| format!("kernel maps full: {}", parts.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_index_and_a_distinct_key() {
        for (i, k) in MapFull::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i);
        }
        let keys: std::collections::BTreeSet<_> = MapFull::ALL.iter().map(|k| k.key()).collect();
        assert_eq!(keys.len(), MapFull::ALL.len());
    }

    #[test]
    fn summary_names_only_what_was_lost() {
        assert_eq!(summary_line(&[0; MAP_FULL_KINDS as usize]), None);
        let mut c = [0; MAP_FULL_KINDS as usize];
        c[MapFull::Writes as usize] = 7;
        let line = summary_line(&c).unwrap();
        assert!(
            line.starts_with("kernel maps full: 7 writes not counted"),
            "{line}"
        );
        assert!(!line.contains("copy-up"), "{line}");
    }

    #[test]
    fn the_schema_document_explains_every_kind() {
        for k in MapFull::ALL {
            let field = format!("- `drops.map_full.{}` (integer): {}", k.key(), k.lost());
            assert!(
                crate::report::SCHEMA_DOC.contains(&field),
                "docs/json-schema.md lacks {field:?}"
            );
        }
    }
}
