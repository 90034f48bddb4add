//! Placing one model across several devices (pipeline placement): which device holds each layer.
//!
//! [`Placement::plan`] is the rule, a pure function of sizes: contiguous layer ranges, one per device in the
//! order given, each device's share of the weights proportional to its free memory; the embedding goes on
//! the first device, the final norm and the unembedding on the last, and a layer is never split. The forward
//! pass moves the residual at each boundary ([`crate::Transformer`]), a layer's KV cache lives on its device,
//! and hooks see a layer's activations on that layer's device.
//!
//! Free memory comes from [`crate::device::free_bytes`]: for a CUDA device, `cudaMemGetInfo` of the CUDA
//! runtime LibTorch already loaded; for the CPU, the machine's `MemAvailable`, shared equally by every
//! `cpu` entry of the list (so `cpu,cpu` splits the layers in halves). Where free memory cannot be read,
//! the devices count as equal.
use std::fmt;
use std::ops::Range;

use tch::{Device, Kind};

use crate::config::TransformerConfig;
use crate::device::device_name;
use crate::{ModelError, Result};

/// Which device holds each layer: contiguous ranges of layers, one per device (a device may hold none when
/// there are more devices than layers), the embedding on the first device and the final norm and unembedding
/// on the last.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    devices: Vec<Device>,
    // `ranges[i]` are the layers on `devices[i]`; they follow each other and cover every layer.
    ranges: Vec<Range<usize>>,
}

impl Placement {
    /// Every layer of an `n_layers`-deep model on `device`.
    pub fn single(device: Device, n_layers: usize) -> Self {
        Placement { devices: vec![device], ranges: std::iter::once(0..n_layers).collect() }
    }

    /// Places layers of `layer_bytes[l]` bytes each, an embedding of `embed_bytes` (first device) and a head
    /// (final norm and unembedding) of `head_bytes` (last device) on `devices`, each given with its free
    /// bytes. Each device's share of the total is proportional to its free memory; a layer goes to the device
    /// whose share holds its middle byte, and is then moved to a neighbour if that keeps a device within its
    /// free memory where it was not. Fails, naming the device, when some device cannot hold what it was
    /// given.
    pub fn plan(layer_bytes: &[u64], embed_bytes: u64, head_bytes: u64, devices: &[(Device, u64)]) -> Result<Placement> {
        let Some(&(first, _)) = devices.first() else {
            return Err(ModelError::InvalidArgument("a placement needs at least one device".into()));
        };
        if devices.len() == 1 {
            let p = Placement::single(first, layer_bytes.len());
            p.check(layer_bytes, embed_bytes, head_bytes, devices)?;
            return Ok(p);
        }
        let total: u128 = embed_bytes as u128 + head_bytes as u128 + layer_bytes.iter().map(|&b| b as u128).sum::<u128>();
        let free_total: u128 = devices.iter().map(|&(_, f)| f as u128).sum();
        // Device i's share ends at bounds[i] bytes into [embedding, layer 0, ..., layer L-1, head]; with no free
        // memory reported anywhere the shares are equal (and the check below names the first device).
        let mut bounds = Vec::with_capacity(devices.len());
        let mut cum: u128 = 0;
        for (i, &(_, f)) in devices.iter().enumerate() {
            cum += if free_total == 0 { 1 } else { f as u128 };
            let denom = if free_total == 0 { devices.len() as u128 } else { free_total };
            bounds.push(if i + 1 == devices.len() { u128::MAX } else { total * cum / denom });
        }
        let mut owner = Vec::with_capacity(layer_bytes.len());
        let mut at = embed_bytes as u128;
        let mut dev = 0;
        for &b in layer_bytes {
            let middle = at + b as u128 / 2;
            while middle >= bounds[dev] {
                dev += 1;
            }
            owner.push(dev);
            at += b as u128;
        }
        repair(&mut owner, layer_bytes, embed_bytes, head_bytes, devices);
        let mut ranges = Vec::with_capacity(devices.len());
        let mut start = 0;
        for d in 0..devices.len() {
            let end = start + owner[start..].iter().take_while(|&&o| o == d).count();
            ranges.push(start..end);
            start = end;
        }
        let p = Placement { devices: devices.iter().map(|&(d, _)| d).collect(), ranges };
        p.check(layer_bytes, embed_bytes, head_bytes, devices)?;
        Ok(p)
    }

    /// [`Placement::plan`] for a model of shape `cfg` in `kind` on `devices`, with their free memory read now
    /// ([`crate::device::free_bytes`]). One device takes everything without asking its memory.
    pub fn for_model(cfg: &TransformerConfig, kind: Kind, devices: &[Device]) -> Result<Placement> {
        match devices {
            [] => Err(ModelError::InvalidArgument("a placement needs at least one device".into())),
            [d] => Ok(Placement::single(*d, cfg.n_layers)),
            _ => {
                let (layers, embed, head) = weight_sizes(cfg, kind);
                // The CPU entries share one memory, read once so that equal entries get equal shares.
                let cpus = devices.iter().filter(|d| **d == Device::Cpu).count() as u64;
                let cpu_free = if cpus > 0 { crate::device::free_bytes(Device::Cpu).checked_div(cpus).unwrap_or(0) } else { 0 };
                let free: Vec<(Device, u64)> =
                    devices.iter().map(|&d| (d, if d == Device::Cpu { cpu_free } else { crate::device::free_bytes(d) })).collect();
                Placement::plan(&layers, embed, head, &free)
            }
        }
    }

    /// The devices, in order (the first holds the embedding, the last the unembedding).
    pub fn devices(&self) -> &[Device] {
        &self.devices
    }

    /// The layers of each device, in the order of [`Placement::devices`].
    pub fn ranges(&self) -> &[Range<usize>] {
        &self.ranges
    }

    /// Whether the model spans more than one entry of the device list (even if two entries are the same
    /// device, as `cpu,cpu`).
    pub fn is_split(&self) -> bool {
        self.devices.len() > 1
    }

    /// The index in [`Placement::devices`] of the device holding `layer` (the last one past the last layer).
    pub fn stage_of(&self, layer: usize) -> usize {
        self.ranges.iter().position(|r| r.contains(&layer)).unwrap_or(self.devices.len() - 1)
    }

    /// The device holding `layer`.
    pub fn layer_device(&self, layer: usize) -> Device {
        self.devices[self.stage_of(layer)]
    }

    /// The device of the embedding: the first.
    pub fn first(&self) -> Device {
        self.devices[0]
    }

    /// The device of the final norm and the unembedding: the last.
    pub fn last(&self) -> Device {
        self.devices[self.devices.len() - 1]
    }

    /// Bytes placed on each device, in order.
    fn loads(&self, layer_bytes: &[u64], embed_bytes: u64, head_bytes: u64) -> Vec<u128> {
        let mut loads: Vec<u128> = self.ranges.iter().map(|r| layer_bytes[r.clone()].iter().map(|&b| b as u128).sum()).collect();
        loads[0] += embed_bytes as u128;
        *loads.last_mut().expect("one device at least") += head_bytes as u128;
        loads
    }

    /// An error naming the first device given more than its free memory.
    fn check(&self, layer_bytes: &[u64], embed_bytes: u64, head_bytes: u64, devices: &[(Device, u64)]) -> Result<()> {
        let loads = self.loads(layer_bytes, embed_bytes, head_bytes);
        for (i, (&load, &(device, free))) in loads.iter().zip(devices).enumerate() {
            if load > free as u128 {
                let mut what = Vec::new();
                if i == 0 {
                    what.push("the embedding".to_string());
                }
                let r = &self.ranges[i];
                if !r.is_empty() {
                    what.push(format!("layers {}..{}", r.start, r.end));
                }
                if i + 1 == devices.len() {
                    what.push("the final norm and unembedding".to_string());
                }
                let total: u128 = loads.iter().sum();
                let free_total: u128 = devices.iter().map(|&(_, f)| f as u128).sum();
                return Err(ModelError::InvalidArgument(format!(
                    "device {} is too small: it would hold {} ({}) but has {} free (the model needs {} in all, the {} device(s) have {} free)",
                    device_name(device),
                    what.join(", "),
                    gib(load),
                    gib(free as u128),
                    gib(total),
                    devices.len(),
                    gib(free_total),
                )));
            }
        }
        Ok(())
    }
}

impl fmt::Display for Placement {
    /// `cuda:0 layers 0..15 (+ embedding), cuda:1 layers 15..30 (+ unembedding)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let last = self.devices.len() - 1;
        for (i, (d, r)) in self.devices.iter().zip(&self.ranges).enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{} layers {}..{}", device_name(*d), r.start, r.end)?;
            match (i == 0, i == last) {
                (true, true) => write!(f, " (+ embedding, unembedding)")?,
                (true, false) => write!(f, " (+ embedding)")?,
                (false, true) => write!(f, " (+ unembedding)")?,
                _ => {}
            }
        }
        Ok(())
    }
}

/// Moves boundary layers to a neighbour while that brings an over-full device within its free memory and
/// keeps the neighbour within its own: the middle-byte rule can be a fraction of a layer off.
fn repair(owner: &mut [usize], layer_bytes: &[u64], embed_bytes: u64, head_bytes: u64, devices: &[(Device, u64)]) {
    let n = devices.len();
    let load = |owner: &[usize], d: usize| -> u128 {
        let mut s: u128 = owner.iter().zip(layer_bytes).filter(|(&o, _)| o == d).map(|(_, &b)| b as u128).sum();
        if d == 0 {
            s += embed_bytes as u128;
        }
        if d + 1 == n {
            s += head_bytes as u128;
        }
        s
    };
    // Each move shifts a layer one device along and fixes an excess; bounded to stay a plain loop.
    for _ in 0..owner.len() * n {
        let Some(d) = (0..n).find(|&d| load(owner, d) > devices[d].1 as u128) else { return };
        let mine: Vec<usize> = (0..owner.len()).filter(|&l| owner[l] == d).collect();
        let (Some(&lo), Some(&hi)) = (mine.first(), mine.last()) else { return };
        let fits = |owner: &[usize], to: usize, l: usize| load(owner, to) + layer_bytes[l] as u128 <= devices[to].1 as u128;
        if d + 1 < n && fits(owner, d + 1, hi) {
            owner[hi] = d + 1;
        } else if d > 0 && fits(owner, d - 1, lo) {
            owner[lo] = d - 1;
        } else {
            return;
        }
    }
}

/// Bytes of each layer's weights, of the embedding and of the head (final norm and unembedding; a tied
/// unembedding counts too, as the last device holds its own copy) for a model of shape `cfg` held dense in
/// `kind`. Packed int4 weights take less: the estimate errs on the safe side.
pub fn weight_sizes(cfg: &TransformerConfig, kind: Kind) -> (Vec<u64>, u64, u64) {
    let e = kind.elt_size_in_bytes() as u64;
    let (d, hd, nh, nkv, dm) = (cfg.d_model as u64, cfg.d_head as u64, cfg.n_heads as u64, cfg.n_kv_heads as u64, cfg.d_mlp as u64);
    let mut per_layer = d * (nh + 2 * nkv) * hd + nh * hd * d + 3 * d * dm + 2 * d;
    if cfg.qkv_bias {
        per_layer += (nh + 2 * nkv) * hd;
    }
    if cfg.qk_norm {
        per_layer += 2 * hd;
    }
    if cfg.gemma {
        per_layer += 2 * d;
    }
    let embed = cfg.vocab_size as u64 * d;
    (vec![per_layer * e; cfg.n_layers], embed * e, (embed + d) * e)
}

fn gib(bytes: u128) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: u64 = 1 << 30;

    fn cuda(n: usize) -> Device {
        Device::Cuda(n)
    }

    #[test]
    fn one_device_holds_everything() {
        let p = Placement::plan(&[G; 30], G, G, &[(cuda(0), 80 * G)]).unwrap();
        assert_eq!(p.ranges().len(), 1);
        assert_eq!(p.ranges()[0], 0..30);
        assert_eq!(p.devices(), &[cuda(0)]);
        assert!(!p.is_split());
        assert_eq!((p.first(), p.last(), p.layer_device(29)), (cuda(0), cuda(0), cuda(0)));
    }

    #[test]
    fn equal_devices_split_in_halves() {
        let p = Placement::plan(&[G; 30], 0, 0, &[(cuda(0), 40 * G), (cuda(1), 40 * G)]).unwrap();
        assert_eq!(p.ranges(), &[0..15, 15..30]);
        assert_eq!((p.layer_device(14), p.layer_device(15)), (cuda(0), cuda(1)));
        assert_eq!(p.stage_of(15), 1);
        assert_eq!(p.to_string(), "cuda:0 layers 0..15 (+ embedding), cuda:1 layers 15..30 (+ unembedding)");
    }

    #[test]
    fn shares_follow_free_memory() {
        // 3:1 free memory: three quarters of 40 layers on the first device.
        let p = Placement::plan(&[G; 40], 0, 0, &[(cuda(0), 60 * G), (cuda(1), 20 * G)]).unwrap();
        assert_eq!(p.ranges(), &[0..30, 30..40]);
        // 1:2:1 over 3 devices.
        let p = Placement::plan(&[G; 40], 0, 0, &[(cuda(0), 10 * G), (cuda(1), 20 * G), (cuda(2), 10 * G)]).unwrap();
        assert_eq!(p.ranges(), &[0..10, 10..30, 30..40]);
        // The embedding and head count towards their devices' shares: 10 GiB of each pushes layers inward.
        let p = Placement::plan(&[G; 20], 10 * G, 10 * G, &[(cuda(0), 40 * G), (cuda(1), 40 * G)]).unwrap();
        assert_eq!(p.ranges(), &[0..10, 10..20]);
        let p = Placement::plan(&[G; 20], 10 * G, 0, &[(cuda(0), 40 * G), (cuda(1), 40 * G)]).unwrap();
        assert_eq!(p.ranges(), &[0..5, 5..20]);
    }

    #[test]
    fn a_layer_is_never_split_and_ranges_are_contiguous() {
        // Uneven layers and odd memory: every layer is on exactly one device, ranges follow each other.
        let layers: Vec<u64> = (0..17).map(|i| (i % 5 + 1) * G / 3).collect();
        let devs = [(cuda(0), 7 * G), (cuda(1), 3 * G), (cuda(2), 11 * G)];
        let p = Placement::plan(&layers, G / 2, G / 2, &devs).unwrap();
        let mut next = 0;
        for r in p.ranges() {
            assert_eq!(r.start, next);
            next = r.end;
        }
        assert_eq!(next, layers.len());
        // One huge layer lands whole on one device.
        let p = Placement::plan(&[G, 9 * G, G], 0, 0, &[(cuda(0), 10 * G), (cuda(1), 10 * G)]).unwrap();
        assert_eq!(p.ranges(), &[0..1, 1..3]);
    }

    #[test]
    fn a_boundary_layer_moves_to_a_neighbour_with_room() {
        // Two layers each side, but the second device has room for one only and the first for three.
        let devs = [(cuda(0), 3 * G + G / 2), (cuda(1), G + G / 4)];
        let mut owner = vec![0, 0, 1, 1];
        repair(&mut owner, &[G; 4], 0, 0, &devs);
        assert_eq!(owner, [0, 0, 0, 1]);
        // And forward: the first device over, the second with room.
        let mut owner = vec![0, 0, 0, 1];
        repair(&mut owner, &[G; 4], 0, 0, &[(cuda(0), 2 * G), (cuda(1), 2 * G)]);
        assert_eq!(owner, [0, 0, 1, 1]);
        // No room anywhere: left as it is (the check then names the device).
        let mut owner = vec![0, 0, 0, 1];
        repair(&mut owner, &[G; 4], 0, 0, &[(cuda(0), 2 * G), (cuda(1), G)]);
        assert_eq!(owner, [0, 0, 0, 1]);
    }

    #[test]
    fn too_small_a_device_is_named() {
        // Four 1 GiB layers on two devices of 1.5 GiB: one of them must take two.
        let err = Placement::plan(&[G; 4], 0, 0, &[(cuda(0), G + G / 2), (cuda(1), G + G / 2)]).unwrap_err().to_string();
        assert!(err.contains("device cuda:0 is too small"), "{err}");
        assert!(err.contains("layers 0..2"), "{err}");
        // A large embedding on a small first device.
        let err = Placement::plan(&[G; 2], 5 * G, 0, &[(cuda(0), 2 * G), (cuda(1), 40 * G)]).unwrap_err().to_string();
        assert!(err.contains("device cuda:0 is too small") && err.contains("the embedding"), "{err}");
        // The head on a small last device.
        let err = Placement::plan(&[G; 2], 0, 5 * G, &[(cuda(0), 40 * G), (cuda(1), 2 * G)]).unwrap_err().to_string();
        assert!(err.contains("device cuda:1 is too small") && err.contains("unembedding"), "{err}");
        // One device without room.
        let err = Placement::plan(&[G; 2], 0, 0, &[(Device::Cpu, G)]).unwrap_err().to_string();
        assert!(err.contains("device cpu is too small"), "{err}");
        assert!(Placement::plan(&[G], 0, 0, &[]).is_err());
    }

    #[test]
    fn more_devices_than_layers_leaves_some_empty() {
        let p = Placement::plan(&[G; 2], 0, 0, &[(cuda(0), 10 * G), (cuda(1), 10 * G), (cuda(2), 10 * G), (cuda(3), 10 * G)]).unwrap();
        assert_eq!(p.ranges().iter().map(|r| r.len()).sum::<usize>(), 2);
        assert_eq!(p.last(), cuda(3));
        assert_eq!(p.layer_device(1), p.devices()[p.stage_of(1)]);
    }
}
