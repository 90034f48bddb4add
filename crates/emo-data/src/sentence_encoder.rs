//! A small BERT sentence encoder in the style of sentence-transformers' `all-MiniLM-L6-v2`: a post-LayerNorm
//! BERT encoder, mean pooling over the real (unpadded) tokens, L2 normalisation. It reads a Hugging Face
//! folder (`config.json`, `model.safetensors`, `tokenizer.json`, optionally `sentence_bert_config.json` and
//! `1_Pooling/config.json`) and reproduces `sentence_transformers.SentenceTransformer.encode(...,
//! normalize_embeddings=True)` to float rounding.
//!
//! ```no_run
//! use emo_data::SentenceEncoder;
//! let enc = SentenceEncoder::load(&SentenceEncoder::default_dir(), tch::Device::Cpu)?;
//! let e = enc.encode(&["I am furious.", "What a lovely day!"])?; // [2, 384], unit rows
//! let cosine = e.get(0).dot(&e.get(1)).double_value(&[]);
//! # Ok::<(), emo_model::ModelError>(())
//! ```
use std::path::{Path, PathBuf};

use serde_json::Value;
use tch::{Device, Kind, Tensor};
use tokenizers::{TruncationDirection, TruncationParams, TruncationStrategy};

use emo_model::weights::{SafetensorsWeights, WeightSource};
use emo_model::{ModelError, Result};

/// The folder name of the model under the models directory.
const MODEL_NAME: &str = "all-MiniLM-L6-v2";
/// sentence-transformers' `max_seq_length` for all-MiniLM-L6-v2 (it was trained on 128 but is served at 256);
/// used when the folder has no `sentence_bert_config.json`.
const DEFAULT_MAX_SEQ_LEN: usize = 256;
/// Texts per forward pass: bounds memory (activations grow with batch x longest text) while keeping matmuls
/// large enough to be efficient. sentence-transformers' default batch size.
const BATCH: usize = 32;

/// The shape of a BERT encoder, from `config.json`.
#[derive(Clone, Debug, PartialEq)]
struct BertConfig {
    vocab_size: usize,
    hidden: usize,
    heads: usize,
    layers: usize,
    intermediate: usize,
    max_positions: usize,
    type_vocab_size: usize,
    layer_norm_eps: f64,
}

impl BertConfig {
    fn from_file(path: &Path) -> Result<Self> {
        let v = read_json(path)?;
        let bad = |key: &str, msg: &str| ModelError::Metadata { path: path.to_path_buf(), key: key.into(), msg: msg.into() };
        let uint = |key: &str| -> Result<usize> {
            match v.get(key).and_then(Value::as_u64) {
                Some(x) if x > 0 => Ok(x as usize),
                _ => Err(bad(key, "missing or not a positive integer")),
            }
        };
        // Only the plain BERT recipe is implemented; a model that needs anything else must be refused rather
        // than encoded wrongly.
        match v.get("hidden_act").and_then(Value::as_str) {
            Some("gelu") => {}
            Some(other) => return Err(bad("hidden_act", &format!("`{other}` is not supported (supported: gelu)"))),
            None => return Err(bad("hidden_act", "missing or not a string")),
        }
        if let Some(p) = v.get("position_embedding_type") {
            if p.as_str() != Some("absolute") {
                return Err(bad("position_embedding_type", &format!("{p} is not supported (supported: \"absolute\")")));
            }
        }
        let layer_norm_eps = match v.get("layer_norm_eps").and_then(Value::as_f64) {
            Some(e) if e > 0.0 && e.is_finite() => e,
            _ => return Err(bad("layer_norm_eps", "missing or not a positive number")),
        };
        let cfg = BertConfig {
            vocab_size: uint("vocab_size")?,
            hidden: uint("hidden_size")?,
            heads: uint("num_attention_heads")?,
            layers: uint("num_hidden_layers")?,
            intermediate: uint("intermediate_size")?,
            max_positions: uint("max_position_embeddings")?,
            // BERT's default; only row 0 is used (single-sentence inputs), but the shape is still checked.
            type_vocab_size: if v.get("type_vocab_size").is_some() { uint("type_vocab_size")? } else { 2 },
            layer_norm_eps,
        };
        if !cfg.hidden.is_multiple_of(cfg.heads) {
            return Err(bad("num_attention_heads", &format!("{} heads do not divide hidden_size {}", cfg.heads, cfg.hidden)));
        }
        Ok(cfg)
    }
}

/// One encoder layer's weights, laid out for the forward pass.
struct Layer {
    // Query, key and value fused into one matmul: one kernel instead of three.
    qkv_w: Tensor,
    qkv_b: Tensor,
    attn_out_w: Tensor,
    attn_out_b: Tensor,
    attn_ln_w: Tensor,
    attn_ln_b: Tensor,
    inter_w: Tensor,
    inter_b: Tensor,
    out_w: Tensor,
    out_b: Tensor,
    out_ln_w: Tensor,
    out_ln_b: Tensor,
}

/// A BERT sentence encoder: texts in, L2-normalised mean-pooled embeddings out.
pub struct SentenceEncoder {
    cfg: BertConfig,
    device: Device,
    tokenizer: tokenizers::Tokenizer,
    tokenizer_path: PathBuf,
    word_emb: Tensor,
    pos_emb: Tensor,
    // Row 0 of the token-type table: every token is in sentence A.
    type_emb: Tensor,
    emb_ln_w: Tensor,
    emb_ln_b: Tensor,
    layers: Vec<Layer>,
}

// SAFETY: as for `Transformer`: the encoder owns its weight tensors and never mutates them after `load` (every
// forward op is out-of-place), LibTorch tensor reads are thread-safe, and `tokenizers::Tokenizer` is `Sync`;
// sharing `&SentenceEncoder` across threads is therefore sound.
unsafe impl Sync for SentenceEncoder {}

impl SentenceEncoder {
    /// Loads the encoder from a sentence-transformers / Hugging Face folder onto `device`, in f32.
    ///
    /// Reads `config.json` (a BERT with `hidden_act: "gelu"` and absolute positions), `model.safetensors`
    /// (tensor names with or without a `bert.` prefix; every shape is checked against the config),
    /// `tokenizer.json`, and when present `sentence_bert_config.json` (`max_seq_length`, default 256: longer
    /// texts are truncated to that many tokens, special tokens included) and `1_Pooling/config.json` (which
    /// must ask for mean pooling, the only pooling implemented). Every problem is an error naming the file.
    pub fn load(dir: &Path, device: Device) -> Result<Self> {
        if !dir.is_dir() {
            return Err(ModelError::ModelNotFound {
                reference: dir.display().to_string(),
                msg: "no such folder (run `scripts/setup.sh` to install all-MiniLM-L6-v2, or set $EMO_MODELS_DIR)".into(),
            });
        }
        let cfg = BertConfig::from_file(&dir.join("config.json"))?;
        check_pooling(&dir.join("1_Pooling/config.json"), cfg.hidden)?;
        let max_len = max_seq_length(&dir.join("sentence_bert_config.json"))?
            // Positions past the table do not exist; sentence-transformers would fail on such a text, we cut it.
            .min(cfg.max_positions);

        let tokenizer_path = dir.join("tokenizer.json");
        let tok_err = |msg: String| ModelError::Tokenizer { path: tokenizer_path.clone(), msg };
        if !tokenizer_path.is_file() {
            return Err(tok_err("file not found".into()));
        }
        let mut tokenizer = tokenizers::Tokenizer::from_file(&tokenizer_path).map_err(|e| tok_err(format!("cannot load tokenizer.json: {e}")))?;
        // tokenizer.json carries the training-time settings (truncate and pad to 128); sentence-transformers
        // overrides both per call: truncation to max_seq_length, padding to the batch's longest text, which
        // `encode` does itself.
        tokenizer
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: max_len,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| tok_err(format!("cannot truncate to {max_len} tokens: {e}")))?;
        tokenizer.with_padding(None);
        // An id past the embedding table would make LibTorch fail mid-forward; refuse the pair up front.
        let max_id = tokenizer.get_vocab(true).values().copied().max().unwrap_or(0) as usize;
        if max_id >= cfg.vocab_size {
            return Err(tok_err(format!("token id {max_id} does not fit the model's vocab_size {} (config.json)", cfg.vocab_size)));
        }

        let src = SafetensorsWeights::open(dir)?;
        // sentence-transformers saves the bare `BertModel` (`embeddings.*`); a `BertFor*` checkpoint prefixes
        // every name with `bert.`.
        let prefix = if src.contains("bert.embeddings.word_embeddings.weight") { "bert." } else { "" };
        let get = |name: &str, shape: &[i64]| -> Result<Tensor> {
            let name = format!("{prefix}{name}");
            let t = src.tensor(&name)?;
            if t.size() != shape {
                return Err(ModelError::ShapeMismatch { path: src.path().to_path_buf(), name, got: t.size(), expected: shape.to_vec() });
            }
            Ok(t.f_to_kind(Kind::Float)?.f_to_device(device)?)
        };
        let d = cfg.hidden as i64;
        let di = cfg.intermediate as i64;
        let word_emb = get("embeddings.word_embeddings.weight", &[cfg.vocab_size as i64, d])?;
        let pos_emb = get("embeddings.position_embeddings.weight", &[cfg.max_positions as i64, d])?;
        let type_emb = get("embeddings.token_type_embeddings.weight", &[cfg.type_vocab_size as i64, d])?.f_get(0)?;
        let emb_ln_w = get("embeddings.LayerNorm.weight", &[d])?;
        let emb_ln_b = get("embeddings.LayerNorm.bias", &[d])?;
        let mut layers = Vec::with_capacity(cfg.layers);
        for l in 0..cfg.layers {
            let p = |s: &str| format!("encoder.layer.{l}.{s}");
            let proj = |which: &str| -> Result<(Tensor, Tensor)> {
                Ok((get(&p(&format!("attention.self.{which}.weight")), &[d, d])?, get(&p(&format!("attention.self.{which}.bias")), &[d])?))
            };
            let (qw, qb) = proj("query")?;
            let (kw, kb) = proj("key")?;
            let (vw, vb) = proj("value")?;
            layers.push(Layer {
                qkv_w: Tensor::f_cat(&[qw, kw, vw], 0)?,
                qkv_b: Tensor::f_cat(&[qb, kb, vb], 0)?,
                attn_out_w: get(&p("attention.output.dense.weight"), &[d, d])?,
                attn_out_b: get(&p("attention.output.dense.bias"), &[d])?,
                attn_ln_w: get(&p("attention.output.LayerNorm.weight"), &[d])?,
                attn_ln_b: get(&p("attention.output.LayerNorm.bias"), &[d])?,
                inter_w: get(&p("intermediate.dense.weight"), &[di, d])?,
                inter_b: get(&p("intermediate.dense.bias"), &[di])?,
                out_w: get(&p("output.dense.weight"), &[d, di])?,
                out_b: get(&p("output.dense.bias"), &[d])?,
                out_ln_w: get(&p("output.LayerNorm.weight"), &[d])?,
                out_ln_b: get(&p("output.LayerNorm.bias"), &[d])?,
            });
        }
        Ok(SentenceEncoder { cfg, device, tokenizer, tokenizer_path, word_emb, pos_emb, type_emb, emb_ln_w, emb_ln_b, layers })
    }

    /// Where `scripts/setup.sh` puts the model: `$EMO_MODELS_DIR/all-MiniLM-L6-v2` when that variable is set,
    /// else `models/all-MiniLM-L6-v2` under the first of [`emo_model::home::roots`] that has it.
    pub fn default_dir() -> PathBuf {
        match std::env::var_os("EMO_MODELS_DIR") {
            Some(models) => PathBuf::from(models).join(MODEL_NAME),
            None => emo_model::home::locate(&format!("models/{MODEL_NAME}")),
        }
    }

    /// The embedding width (384 for all-MiniLM-L6-v2).
    pub fn dim(&self) -> usize {
        self.cfg.hidden
    }

    /// Embeds `texts`: returns [n, dim] f32 on the CPU, row i for `texts[i]`, each row of unit L2 norm
    /// (an empty text still has `[CLS] [SEP]` and gets a unit vector). Texts are run in batches of 32, grouped
    /// by length so that little is padded; the result does not depend on the grouping beyond float rounding.
    pub fn encode(&self, texts: &[&str]) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        let dim = self.cfg.hidden as i64;
        if texts.is_empty() {
            return Ok(Tensor::f_zeros([0, dim], (Kind::Float, Device::Cpu))?);
        }
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| ModelError::Tokenizer { path: self.tokenizer_path.clone(), msg: format!("encoding failed: {e}") })?;
        let ids: Vec<&[u32]> = encodings.iter().map(|e| e.get_ids()).collect();
        // Longest first, so each batch holds texts of similar length (as sentence-transformers does); ties keep
        // input order, so the grouping is deterministic.
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(ids[i].len()));
        let mut pooled = Vec::with_capacity(order.len().div_ceil(BATCH));
        for chunk in order.chunks(BATCH) {
            let rows: Vec<&[u32]> = chunk.iter().map(|&i| ids[i]).collect();
            pooled.push(self.forward(&rows)?.f_to_device(Device::Cpu)?);
        }
        let sorted = Tensor::f_cat(&pooled, 0)?;
        // Row k of `sorted` is text order[k]; invert the permutation to return rows in input order.
        let mut inverse = vec![0i64; order.len()];
        for (k, &i) in order.iter().enumerate() {
            inverse[i] = k as i64;
        }
        Ok(sorted.f_index_select(0, &Tensor::from_slice(&inverse))?)
    }

    /// Runs one batch of token-id rows (special tokens included, at most `max_positions` long) through the
    /// encoder, right-padded to the longest; returns the normalised mean-pooled embeddings, [rows, dim].
    fn forward(&self, rows: &[&[u32]]) -> Result<Tensor> {
        let b = rows.len() as i64;
        let t = rows.iter().map(|r| r.len()).max().unwrap_or(0).max(1) as i64;
        let (d, nh) = (self.cfg.hidden as i64, self.cfg.heads as i64);
        let hd = d / nh;
        let eps = self.cfg.layer_norm_eps;
        let mut flat_ids = vec![0i64; (b * t) as usize];
        let mut flat_mask = vec![0f32; (b * t) as usize];
        for (r, row) in rows.iter().enumerate() {
            for (c, &id) in row.iter().enumerate() {
                flat_ids[r * t as usize + c] = id as i64;
                flat_mask[r * t as usize + c] = 1.0;
            }
        }
        let ids = Tensor::from_slice(&flat_ids).f_view([b, t])?.f_to_device(self.device)?;
        let mask = Tensor::from_slice(&flat_mask).f_view([b, t])?.f_to_device(self.device)?; // [b, t], 1 = real

        // Embeddings: word + absolute position + token type 0, then LayerNorm (BERT is post-norm throughout).
        let pos = self.pos_emb.f_narrow(0, 0, t)?; // [t, d], broadcast over rows
        let emb = Tensor::f_embedding(&self.word_emb, &ids, -1, false, false)?.f_add(&pos)?.f_add(&self.type_emb)?;
        let mut h = emb.f_layer_norm([d], Some(&self.emb_ln_w), Some(&self.emb_ln_b), eps, false)?;

        // Keys that are padding get no attention weight, from any query: [b, 1, 1, t], true = attend. Every
        // row has at least [CLS], so no softmax row is fully masked. Padding queries compute garbage that the
        // pooling mask discards.
        let attend = mask.f_gt(0.5)?.f_view([b, 1, 1, t])?;
        for layer in &self.layers {
            let qkv = h.f_linear(&layer.qkv_w, Some(&layer.qkv_b))?;
            let parts = qkv.f_split(d, -1)?;
            let heads = |x: &Tensor| -> Result<Tensor> { Ok(x.f_view([b, t, nh, hd])?.f_transpose(1, 2)?) };
            let (q, k, v) = (heads(&parts[0])?, heads(&parts[1])?, heads(&parts[2])?);
            // Scale 1/sqrt(d_head), as BERT's self-attention.
            let z = Tensor::f_scaled_dot_product_attention(&q, &k, &v, Some(&attend), 0.0, false, None, false)?;
            let z = z.f_transpose(1, 2)?.f_reshape([b, t, d])?;
            let attn = z.f_linear(&layer.attn_out_w, Some(&layer.attn_out_b))?;
            h = attn.f_add(&h)?.f_layer_norm([d], Some(&layer.attn_ln_w), Some(&layer.attn_ln_b), eps, false)?;
            // Exact (erf) GELU, which `hidden_act: "gelu"` means in transformers, not the tanh approximation.
            let inter = h.f_linear(&layer.inter_w, Some(&layer.inter_b))?.f_gelu("none")?;
            let out = inter.f_linear(&layer.out_w, Some(&layer.out_b))?;
            h = out.f_add(&h)?.f_layer_norm([d], Some(&layer.out_ln_w), Some(&layer.out_ln_b), eps, false)?;
        }

        // Mean over the real tokens only ([CLS] and [SEP] included, as sentence-transformers does), then unit
        // L2 norm; the clamps are sentence-transformers' / F.normalize's guards against division by zero.
        let m = mask.f_unsqueeze(-1)?; // [b, t, 1]
        let summed = h.f_mul(&m)?.f_sum_dim_intlist([1i64].as_slice(), false, Kind::Float)?;
        let counts = m.f_sum_dim_intlist([1i64].as_slice(), false, Kind::Float)?.f_clamp_min(1e-9)?;
        let mean = summed.f_div(&counts)?;
        let norm = mean.f_norm_scalaropt_dim(2, [-1i64].as_slice(), true)?.f_clamp_min(1e-12)?;
        Ok(mean.f_div(&norm)?)
    }
}

/// Reads and parses a JSON file, errors naming it.
fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| ModelError::format(path, format!("invalid JSON: {e}")))
}

/// `max_seq_length` of `sentence_bert_config.json`, or the model's default when the file is absent.
fn max_seq_length(path: &Path) -> Result<usize> {
    if !path.exists() {
        return Ok(DEFAULT_MAX_SEQ_LEN);
    }
    let v = read_json(path)?;
    match v.get("max_seq_length") {
        None | Some(Value::Null) => Ok(DEFAULT_MAX_SEQ_LEN),
        // At least 2, room for [CLS] and [SEP]; fewer and the tokenizer could not truncate.
        Some(x) => match x.as_u64() {
            Some(n) if n >= 2 => Ok(n as usize),
            _ => Err(ModelError::Metadata { path: path.to_path_buf(), key: "max_seq_length".into(), msg: format!("{x} is not an integer >= 2") }),
        },
    }
}

/// Checks that `1_Pooling/config.json`, when present, asks for what `encode` does: mean pooling alone, over
/// `hidden` dimensions.
fn check_pooling(path: &Path, hidden: usize) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let v = read_json(path)?;
    let bad = |key: &str, msg: String| ModelError::Metadata { path: path.to_path_buf(), key: key.into(), msg };
    let flag = |key: &str| v.get(key).and_then(Value::as_bool).unwrap_or(false);
    if !flag("pooling_mode_mean_tokens") {
        return Err(bad("pooling_mode_mean_tokens", "only mean pooling is implemented, and this folder does not ask for it".into()));
    }
    let others = v
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, val)| k.starts_with("pooling_mode_") && k.as_str() != "pooling_mode_mean_tokens" && val.as_bool() == Some(true));
    if let Some((k, _)) = others.into_iter().next() {
        return Err(bad(k, "only mean pooling alone is implemented".into()));
    }
    if let Some(w) = v.get("word_embedding_dimension") {
        if w.as_u64() != Some(hidden as u64) {
            return Err(bad("word_embedding_dimension", format!("{w} differs from config.json's hidden_size {hidden}")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_rejects_other_activations() {
        let dir = std::env::temp_dir().join(format!("bert-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.json");
        let base = r#"{"vocab_size": 10, "hidden_size": 8, "num_attention_heads": 2, "num_hidden_layers": 1,
            "intermediate_size": 16, "max_position_embeddings": 16, "layer_norm_eps": 1e-12, "hidden_act": "ACT"}"#;
        std::fs::write(&path, base.replace("ACT", "gelu")).unwrap();
        let cfg = BertConfig::from_file(&path).unwrap();
        assert_eq!((cfg.hidden, cfg.heads, cfg.type_vocab_size), (8, 2, 2));
        std::fs::write(&path, base.replace("ACT", "gelu_new")).unwrap();
        let err = BertConfig::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("config.json") && err.contains("hidden_act"), "{err}");
        std::fs::write(&path, base.replace("\"num_attention_heads\": 2", "\"num_attention_heads\": 3")).unwrap();
        assert!(BertConfig::from_file(&path).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
