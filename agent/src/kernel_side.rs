//! The attached probes behind a typed handle: every map the run reads or
//! fills is taken from the eBPF object once, here, by its type, so the rest
//! of the agent never names a map.

use crate::attribution::{FilterUpdate, KernelCgroupNames};
use crate::kernel_maps::KernelMaps;
use crate::kernel_names::KernelNames;
use crate::probes::Probes;
use agent_ebpf::{WriteKey, WriteStats};
use anyhow::{anyhow, Context, Result};
use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use std::collections::HashMap;
use tokio::io::unix::AsyncFd;

/// Drops per event kind (`agent_ebpf::EventKind` order).
pub type Drops = [u64; agent_ebpf::EVENT_KINDS as usize];

/// The run's side of the kernel: attached probes, the event ring, the
/// write histograms, the counters and the filters.
pub struct KernelSide {
    /// None once detached.
    probes: Option<Probes>,
    /// The event ring buffer, polled by the main loop.
    pub ring: AsyncFd<RingBuf<MapData>>,
    writes: BpfHashMap<MapData, WriteKey, WriteStats>,
    drops: PerCpuArray<MapData, u64>,
    cgroup_filter: BpfHashMap<MapData, u64, u8>,
    dev_filter: BpfHashMap<MapData, u32, u8>,
    /// The counters of refused inserts and the maps that can fill.
    pub maps: KernelMaps,
    /// The kernel naming copy-up stacks' frames, where it can (taken by
    /// the event sink).
    pub kernel_names: Option<KernelNames>,
    /// Each (cgroup, overlay) pair's write totals as last read (the
    /// kernel's are cumulative).
    writes_seen: HashMap<WriteKey, WriteStats>,
}

impl KernelSide {
    /// Takes the maps out of freshly attached `probes`; the kernel's cgroup
    /// names go to `names` (the attribution worker reads them).
    pub fn take(mut probes: Probes) -> Result<(Self, KernelCgroupNames)> {
        // Handles of its own first: some of the same maps are taken below.
        let maps = KernelMaps::open(&probes.ebpf)?;
        let kernel_names = match probes.kernel_names {
            true => Some(KernelNames::take(&mut probes.ebpf)?),
            false => None,
        };
        let mut take = |name: &str| {
            probes
                .ebpf
                .take_map(name)
                .with_context(|| format!("{name} map"))
        };
        let ring = RingBuf::try_from(take("EVENTS")?).context("EVENTS map")?;
        let writes = BpfHashMap::try_from(take("WRITES")?).context("WRITES map")?;
        let drops = PerCpuArray::try_from(take("DROPS")?).context("DROPS map")?;
        let cgroup_filter =
            BpfHashMap::try_from(take("CGROUP_FILTER")?).context("CGROUP_FILTER map")?;
        let dev_filter = BpfHashMap::try_from(take("DEV_FILTER")?).context("DEV_FILTER map")?;
        let names = BpfHashMap::try_from(take("CGROUP_NAMES")?).context("CGROUP_NAMES map")?;
        // SAFETY: the RingBuf owns its map fd, which stays open and
        // unchanged for as long as the AsyncFd holds it.
        let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|e| anyhow!("polling the ring buffer: {e}"))?;
        Ok((
            KernelSide {
                probes: Some(probes),
                ring,
                writes,
                drops,
                cgroup_filter,
                dev_filter,
                maps,
                kernel_names,
                writes_seen: HashMap::new(),
            },
            names,
        ))
    }

    /// The attached probes' report (attach points and methods).
    pub fn probes(&self) -> Option<&Probes> {
        self.probes.as_ref()
    }

    /// Lets these cgroups' and devices' events through the kernel filter.
    pub fn pass(&mut self, cgroups: &[u64], devs: &[u32]) -> Result<()> {
        for cg in cgroups {
            self.cgroup_filter
                .insert(cg, 1, 0)
                .context("filling CGROUP_FILTER")?;
        }
        for dev in devs {
            self.dev_filter
                .insert(dev, 1, 0)
                .context("filling DEV_FILTER")?;
        }
        Ok(())
    }

    /// Keeps the kernel filters on a followed container: its new cgroup
    /// and root device after a (re)start, minus a device it gave up.
    pub fn follow(&mut self, update: &FilterUpdate) -> Result<()> {
        match *update {
            FilterUpdate::Add {
                cgroup_id,
                root_dev,
            } => self.pass(cgroup_id.as_slice(), root_dev.as_slice()),
            FilterUpdate::RemoveDev(dev) => {
                // Already gone is fine.
                let _ = self.dev_filter.remove(&dev);
                Ok(())
            }
        }
    }

    /// The kernel's write totals per (cgroup, overlay) pair, read now.
    pub fn read_writes(&mut self) -> &HashMap<WriteKey, WriteStats> {
        for (k, stats) in self.writes.iter().flatten() {
            self.writes_seen.insert(k, stats);
        }
        &self.writes_seen
    }

    /// The write totals as last read.
    pub fn writes(&self) -> &HashMap<WriteKey, WriteStats> {
        &self.writes_seen
    }

    /// Events the kernel could not deliver so far, per kind.
    pub fn read_drops(&self) -> Drops {
        let mut d = [0u64; agent_ebpf::EVENT_KINDS as usize];
        for (i, slot) in d.iter_mut().enumerate() {
            if let Ok(v) = self.drops.get(&(i as u32), 0) {
                *slot = v.iter().sum();
            }
        }
        d
    }

    /// Ends the run in the kernel (see [`Probes::stop_events`]); if that
    /// fails, detaches at once, which stops events too.
    pub fn stop_events(&mut self) -> Result<()> {
        let Some(p) = self.probes.as_mut() else {
            return Ok(());
        };
        let res = p.stop_events();
        if res.is_err() {
            self.detach();
        }
        res
    }

    /// Detaches every probe (all at once; see [`Probes::detach`]).
    pub fn detach(&mut self) {
        if let Some(p) = self.probes.take() {
            p.detach();
        }
    }
}
