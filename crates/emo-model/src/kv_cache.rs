//! Per-batch decoding state: the key/value cache, which key slots hold real tokens (left padding does not),
//! and each row's absolute position, from which hooks and RoPE take their positions. A state can also serve
//! as a shared prefix for branch chunks ([`crate::branch`]), which read it without extending it, and rows of
//! several states can be regrouped into one ([`DecodeState::regroup`]: continuous batching).
use tch::{Device, Kind, Tensor};

use crate::device::{return_freed_pages, tensor_bytes};
use crate::{ModelError, Result};

/// The state of a batch of sequences across forward calls. Positions, masks and prompt lengths are on the
/// state's device (the model's first); each layer's keys and values on that layer's device.
pub struct DecodeState {
    batch: i64,
    device: Device,
    cache: bool,
    // Per layer: preallocated [batch, n_kv, capacity, d_head] buffers, so appending a token copies one slot
    // instead of the whole cache.
    kv: Vec<Option<(Tensor, Tensor)>>,
    len: i64,
    key_valid: Tensor,
    seen: Tensor,
    prompt_lens: Tensor,
    chunk_valid: Option<Tensor>,
    step: usize,
    // Slots to allocate at the first append when they cover it (see `reserve`).
    reserved: i64,
    // Between `begin_branch_chunk` and the next `begin_chunk`: keys and values are not stored.
    branching: bool,
}

impl DecodeState {
    /// A fresh state for rows whose prompts have `prompt_lens` real tokens. With `cache` false, keys and
    /// values are not kept: every call must then pass whole sequences.
    pub fn new(prompt_lens: &[i64], n_layers: usize, device: Device, cache: bool) -> Self {
        let b = prompt_lens.len() as i64;
        DecodeState {
            batch: b,
            device,
            cache,
            kv: (0..n_layers).map(|_| None).collect(),
            len: 0,
            key_valid: Tensor::zeros([b, 0], (Kind::Bool, device)),
            seen: Tensor::zeros([b, 1], (Kind::Int64, device)),
            prompt_lens: Tensor::from_slice(prompt_lens).view([b, 1]).to_device(device),
            chunk_valid: None,
            step: 0,
            reserved: 0,
            branching: false,
        }
    }

    /// Allocates room for `slots` keys per row when the cache is first filled (a prompt fed in chunks
    /// and the tokens it will generate), instead of growing by powers of two.
    pub fn reserve(&mut self, slots: i64) {
        self.reserved = slots;
    }

    /// Whether keys and values are kept between calls.
    pub fn caches(&self) -> bool {
        self.cache
    }

    /// Number of rows.
    pub fn batch(&self) -> i64 {
        self.batch
    }

    /// Key slots filled so far (padding included).
    pub fn len(&self) -> i64 {
        self.len
    }

    /// Whether nothing has been run yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes held by the key and value buffers (their whole capacity).
    pub fn bytes(&self) -> usize {
        self.kv.iter().flatten().map(|(k, v)| tensor_bytes(k) + tensor_bytes(v)).sum()
    }

    /// Prompt length of each row, [batch, 1].
    pub fn prompt_lens(&self) -> &Tensor {
        &self.prompt_lens
    }

    /// Forward calls completed so far: 0 during the prompt's.
    pub fn step(&self) -> usize {
        self.step
    }

    /// Starts a chunk: returns the absolute positions of its tokens ([batch, chunk], -1 for padding) and the
    /// attention mask ([batch, 1, chunk, keys] bool, true = may attend).
    pub(crate) fn begin_chunk(&mut self, valid: &Tensor) -> (Tensor, Tensor) {
        let t = valid.size()[1];
        let offsets = valid.cumsum(1, Kind::Int64) - 1;
        let positions = (&self.seen + offsets).where_self(valid, &Tensor::from(-1i64).to_device(self.device));
        let key_valid = Tensor::cat(&[&self.key_valid, valid], 1);
        let total = self.len + t;
        let q_slot = Tensor::arange_start(self.len, total, (Kind::Int64, self.device)).unsqueeze(1);
        let k_slot = Tensor::arange(total, (Kind::Int64, self.device)).unsqueeze(0);
        let causal = k_slot.le_tensor(&q_slot); // [t, T]
                                                // A padding query may attend to itself, so no softmax row is empty (an empty row would give NaN,
                                                // which then leaks through 0 * NaN into real tokens' attention).
        let itself = k_slot.eq_tensor(&q_slot);
        let mask = key_valid.unsqueeze(1).logical_and(&causal.unsqueeze(0)).logical_or(&itself.unsqueeze(0));
        self.key_valid = key_valid;
        self.chunk_valid = Some(valid.shallow_clone());
        self.branching = false;
        (positions, mask.unsqueeze(1))
    }

    /// Stores the chunk's keys and values of layer `l` and returns all keys and values so far. The buffers
    /// are made on `k`'s device: a layer's cache lives on its layer's device.
    pub(crate) fn append_kv(&mut self, l: usize, k: &Tensor, v: &Tensor) -> (Tensor, Tensor) {
        let t = k.size()[2];
        if !self.cache {
            return (k.shallow_clone(), v.shallow_clone());
        }
        if self.branching {
            // A branch chunk is never committed: joined to a copy of the prefix's keys (one layer's, small)
            // rather than written after them, so a prefix kept for many sweeps never grows its buffers.
            if let Some((kb, vb)) = self.kv[l].as_ref() {
                return (Tensor::cat(&[&kb.narrow(2, 0, self.len), k], 2), Tensor::cat(&[&vb.narrow(2, 0, self.len), v], 2));
            }
        }
        let need = self.len + t;
        let slot = &mut self.kv[l];
        let grow = match slot {
            None => true,
            Some((kb, _)) => kb.size()[2] < need,
        };
        if grow {
            let (ok, ov) = match slot.as_ref() {
                Some((ok, ov)) => (ok.narrow(2, 0, self.len), ov.narrow(2, 0, self.len)),
                None => (k.narrow(2, 0, 0), v.narrow(2, 0, 0)),
            };
            let slots = if self.reserved >= need { self.reserved } else { (need.max(64) as u64).next_power_of_two() as i64 };
            *slot = Some(buffers(&ok, &ov, slots));
        }
        let (kb, vb) = slot.as_ref().expect("allocated above");
        kb.narrow(2, self.len, t).copy_(k);
        vb.narrow(2, self.len, t).copy_(v);
        (kb.narrow(2, 0, need), vb.narrow(2, 0, need))
    }

    /// Starts a branch chunk ([`crate::branch`]): every token of row b is one more candidate for that row's next
    /// position, attending to the row's committed keys and to itself only. Returns positions and mask as
    /// `begin_chunk` does; until the next `begin_chunk` the chunks' keys are joined to the committed ones for
    /// attention, never stored.
    pub(crate) fn begin_branch_chunk(&mut self, valid: &Tensor) -> (Tensor, Tensor) {
        let (b, n) = (self.batch, valid.size()[1]);
        let positions = self.seen.expand([b, n], false).where_self(valid, &Tensor::from(-1i64).to_device(self.device));
        let prefix = self.key_valid.unsqueeze(1).expand([b, n, self.len], false);
        let own = Tensor::eye(n, (Kind::Bool, self.device)).unsqueeze(0).expand([b, n, n], false);
        let mask = Tensor::cat(&[prefix, own], 2).unsqueeze(1);
        self.branching = true;
        (positions, mask)
    }

    /// The absolute position of every key the current chunk attends to, [batch, keys]: the committed slots'
    /// (a padding slot gets its row's position before it, -1 at the left edge) and, in a branch chunk, the
    /// candidates', all at their query's position (`chunk_positions`). For sliding-window attention.
    pub(crate) fn key_positions(&self, chunk_positions: &Tensor) -> Tensor {
        let committed = self.key_valid.cumsum(1, Kind::Int64) - 1;
        if self.branching {
            Tensor::cat(&[committed, chunk_positions.shallow_clone()], 1)
        } else {
            committed
        }
    }

    /// Ends the chunk started by `begin_chunk`.
    pub(crate) fn end_chunk(&mut self, t: i64) {
        if let Some(valid) = self.chunk_valid.take() {
            self.seen = &self.seen + valid.sum_dim_intlist(1, true, Kind::Int64);
        }
        self.len += t;
        self.step += 1;
    }

    /// One state made of rows of several states, in order: `parts[i].1` names the rows of `parts[i].0` that are
    /// kept. Every kept row's real key slots are packed to the right, so padding is on the left as in a fresh
    /// prompt and a long-lived batch does not accumulate the padding of rows that left it. Every state must
    /// keep a cache, be on the same device and be past its prompt (one token per row per call from here on).
    /// The new buffers have room for `headroom` more tokens per row (at least one) before they grow.
    ///
    /// The states are consumed a layer at a time: each layer's buffers are freed as soon as their rows are
    /// gathered, so the cache is held about once during a regroup, not twice (old and merged).
    pub fn regroup(mut parts: Vec<(DecodeState, Vec<i64>)>, headroom: i64) -> Result<DecodeState> {
        let invalid = |msg: String| ModelError::InvalidArgument(format!("cannot regroup decode states: {msg}"));
        let first = &parts.first().ok_or_else(|| invalid("no states given".into()))?.0;
        let (device, n_layers) = (first.device, first.kv.len());
        let mut valid_rows: Vec<Vec<i64>> = Vec::new();
        for (s, rows) in &parts {
            if !s.cache || s.is_empty() || s.device != device || s.kv.len() != n_layers {
                return Err(invalid("every state needs a cache, the same device and depth, and a prompt already run".into()));
            }
            if let Some(&bad) = rows.iter().find(|&&r| r < 0 || r >= s.batch) {
                return Err(invalid(format!("row {bad} of a batch of {}", s.batch)));
            }
            if let Some(l) = s.kv.iter().position(Option::is_none) {
                return Err(invalid(format!("layer {l} has no keys yet")));
            }
            let kv = Vec::<bool>::try_from(s.key_valid.to_device(Device::Cpu).contiguous().view(-1))?;
            let len = s.len as usize;
            for &r in rows.iter() {
                let r = r as usize;
                valid_rows.push((0..len).filter(|&j| kv[r * len + j]).map(|j| j as i64).collect());
            }
        }
        let width = valid_rows.iter().map(Vec::len).max().unwrap_or(0) as i64;
        let batch = valid_rows.len() as i64;
        if batch == 0 {
            return Err(invalid("no rows kept".into()));
        }
        // Per part, per kept row: its row there, its row in the merged state and where its real slots are
        // (one range, as they almost always are, or a list); padding goes on the left.
        let mut plans: Vec<Vec<(i64, i64, Slots)>> = Vec::with_capacity(parts.len());
        let (mut seen, mut prompt_lens, mut key_valid) = (Vec::new(), Vec::new(), Vec::new());
        let mut dst_row = 0;
        for (s, rows) in &parts {
            let mut plan = Vec::with_capacity(rows.len());
            let mut kvalid = Vec::with_capacity(rows.len() * width as usize);
            for &r in rows {
                let slots = &valid_rows[dst_row as usize];
                kvalid.extend(std::iter::repeat_n(false, width as usize - slots.len()).chain(std::iter::repeat_n(true, slots.len())));
                let contiguous = slots.windows(2).all(|w| w[1] == w[0] + 1);
                let from = match (contiguous, slots.first()) {
                    (true, Some(&start)) => Slots::Range(start, slots.len() as i64),
                    _ => Slots::List(Tensor::from_slice(slots).to_device(device)),
                };
                plan.push((r, dst_row, from));
                dst_row += 1;
            }
            let rows_t = Tensor::from_slice(rows).to_device(device);
            seen.push(s.seen.index_select(0, &rows_t));
            prompt_lens.push(s.prompt_lens.index_select(0, &rows_t));
            key_valid.push(Tensor::from_slice(&kvalid).view([rows.len() as i64, width]).to_device(device));
            plans.push(plan);
        }
        let step = parts.iter().map(|(s, _)| s.step).max().unwrap_or(1);
        let slots = width + headroom.max(1);
        // Freed pages go back to the system every sixteenth of the cache (when it is worth a call).
        let old_bytes: usize = parts.iter().map(|(s, _)| s.bytes()).sum();
        let trim_every = (old_bytes / 16).max(8 << 20);
        let mut freed = 0;
        let mut kv: Vec<Option<(Tensor, Tensor)>> = Vec::with_capacity(n_layers);
        for l in 0..n_layers {
            let (k0, _) = parts[0].0.kv[l].as_ref().expect("checked above");
            let mut size = k0.size();
            size[0] = batch;
            size[2] = slots;
            // A layer's cache stays on its layer's device (a model placed across devices), not the state's.
            let layer_device = k0.device();
            let (kb, vb) = (Tensor::empty(&size, (k0.kind(), layer_device)), Tensor::empty(&size, (k0.kind(), layer_device)));
            for ((s, rows), plan) in parts.iter_mut().zip(&plans) {
                if rows.is_empty() {
                    continue;
                }
                let (k, v) = s.kv[l].take().expect("checked above");
                freed += tensor_bytes(&k) + tensor_bytes(&v);
                for (src, dst) in [(&k, &kb), (&v, &vb)] {
                    for (r, d, from) in plan {
                        let (src, dst) = (src.narrow(0, *r, 1), dst.narrow(0, *d, 1));
                        let src = match from {
                            Slots::Range(start, len) => src.narrow(2, *start, *len),
                            Slots::List(index) => src.index_select(2, &index.to_device(layer_device)),
                        };
                        let pad = width - src.size()[2];
                        // Padding is masked, but must hold finite values: a zero weight times NaN is NaN.
                        let _ = dst.narrow(2, 0, pad).zero_();
                        dst.narrow(2, pad, width - pad).copy_(&src);
                    }
                }
            }
            kv.push(Some((kb, vb)));
            if device == Device::Cpu && freed >= trim_every {
                // A layer's old buffers come from the C heap, whose holes glibc keeps resident: without this the
                // merged buffers would take new pages beside them and the regroup would hold the cache twice.
                return_freed_pages();
                freed = 0;
            }
        }
        Ok(DecodeState {
            batch,
            device,
            cache: true,
            kv,
            len: width,
            key_valid: Tensor::cat(&key_valid, 0),
            seen: Tensor::cat(&seen, 0),
            prompt_lens: Tensor::cat(&prompt_lens, 0),
            chunk_valid: None,
            step,
            reserved: 0,
            branching: false,
        })
    }
}

/// Where a kept row's real key slots are in its old state.
enum Slots {
    /// `len` slots from `start`.
    Range(i64, i64),
    /// These slots, [n] i64.
    List(Tensor),
}

/// Key and value buffers of `slots` slots, holding `k` and `v` in their first ones. The other slots are left
/// uninitialised (every slot is written before a query reads it), so memory is touched only as the cache
/// fills: a reservation for the reply's tokens costs nothing until they come.
fn buffers(k: &Tensor, v: &Tensor, slots: i64) -> (Tensor, Tensor) {
    let mut size = k.size();
    size[2] = slots;
    let (kb, vb) = (Tensor::empty(&size, (k.kind(), k.device())), Tensor::empty(&size, (v.kind(), v.device())));
    let n = k.size()[2];
    kb.narrow(2, 0, n).copy_(k);
    vb.narrow(2, 0, n).copy_(v);
    (kb, vb)
}

/// Left-pads token rows into `[batch, max_len]` ids and a validity mask (false = padding), with each row's
/// length: the shape every [`DecodeState`] starts from.
pub fn left_pad(rows: &[Vec<u32>], pad_id: u32) -> Result<(Tensor, Tensor, Vec<i64>)> {
    if rows.is_empty() || rows.iter().any(|r| r.is_empty()) {
        return Err(ModelError::InvalidArgument("every prompt needs at least one token".into()));
    }
    let width = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(rows.len() * width);
    let mut valid = Vec::with_capacity(rows.len() * width);
    for r in rows {
        let pad = width - r.len();
        ids.extend(std::iter::repeat_n(pad_id as i64, pad).chain(r.iter().map(|&t| t as i64)));
        valid.extend(std::iter::repeat_n(false, pad).chain(std::iter::repeat_n(true, r.len())));
    }
    let b = rows.len() as i64;
    let lens = rows.iter().map(|r| r.len() as i64).collect();
    Ok((Tensor::from_slice(&ids).view([b, width as i64]), Tensor::from_slice(&valid).view([b, width as i64]), lens))
}
