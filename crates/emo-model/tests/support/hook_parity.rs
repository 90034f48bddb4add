//! Every hook point of a decoder against Hugging Face's values (recorded by hf_hooks.py), shared by
//! tests/hf_hooks.rs (the offline models) and tests/families.rs (the tiny checkpoints).
use std::collections::HashMap;

use emo_model::{CacheHook, HookPoint, HookSet, LogitsFor, Transformer};
use tch::{Kind, Tensor};

/// Every hook point of `t` on `rows` (one left-padded batch) against Hugging Face's values for each row alone.
pub fn compare(t: &Transformer, rows: &[Vec<u32>], reference: &HashMap<String, Tensor>, label: &str) {
    let n_layers = t.config().n_layers;
    let mut hook = CacheHook::new(|_| true);
    let logits = t.forward_rows(rows, 0, &mut HookSet::new().with(&mut hook), LogitsFor::All).unwrap();
    let t = logits.size()[1];
    // The ids and mask the forward ran on, padded by the decoder's own rule.
    let (tokens, mask, _) = emo_model::kv_cache::left_pad(rows, 0).unwrap();
    let cache = hook.into_cache(tokens, mask, n_layers);
    // Worst difference relative to the reference's largest magnitude, per kind of point.
    let mut worst: std::collections::BTreeMap<String, f64> = Default::default();
    for (k, ids) in rows.iter().enumerate() {
        let n = ids.len() as i64;
        for point in HookPoint::all(n_layers) {
            let name = point.to_string();
            let hf = reference.get(&format!("{k}/{name}")).unwrap_or_else(|| panic!("{label}: Hugging Face recorded no {name}")).get(0);
            let ours = cache.get(point).unwrap().get(k as i64).to_kind(Kind::Float);
            // Row k's real tokens: the last n positions (and keys) of the padded batch.
            let ours = if point.pos_dim() == 2 { ours.narrow(1, t - n, n).narrow(2, t - n, n) } else { ours.narrow(0, t - n, n) };
            assert_eq!(ours.size(), hf.size(), "{label} prompt {k} {name}: shape");
            let (ours, hf) = if matches!(point, HookPoint::AttnScores(_)) {
                // Masked scores are -inf in both; compare where they are finite.
                let masked = hf.isinf();
                assert!(ours.isinf().equal(&masked), "{label} prompt {k} {name}: masked entries differ");
                (ours.masked_fill(&masked, 0.0), hf.masked_fill(&masked, 0.0))
            } else {
                (ours, hf)
            };
            let scale = f64::try_from(hf.abs().max()).unwrap().max(1e-6);
            let rel = f64::try_from((&ours - &hf).abs().max()).unwrap() / scale;
            let kind = name.split_once('.').and_then(|(_, r)| r.split_once('.')).map_or(name.clone(), |(_, r)| r.to_string());
            let w = worst.entry(kind).or_default();
            *w = w.max(rel);
            // Measured worst on an AMD EPYC: 7.6e-5 (Qwen2's pattern), most points under 1e-5.
            assert!(rel < 3e-4, "{label} prompt {k} {name}: max |ours - Hugging Face| is {rel:.2e} of its largest value {scale:.3e}");
        }
    }
    eprintln!("{label}: worst relative difference per hook point kind: {worst:?}");
}
