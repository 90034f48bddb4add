//! A chat model ready to use: decoder, tokenizer, chat template and end-of-sequence ids, loaded from a
//! built-in alias, a `.gguf` file, a Hugging Face folder, or a Hugging Face repo id.
use std::path::{Path, PathBuf};

use tch::{Device, Kind};

use crate::chat::{ChatMessage, ChatTemplate};
use crate::config::TransformerConfig;
use crate::generate::{generate, Generated, GenerationConfig};
use crate::gguf::GgufFile;
use crate::hooks::HookSet;
use crate::packed::WeightFormat;
use crate::placement::Placement;
use crate::tokenizer::Tokenizer;
use crate::transformer::Transformer;
use crate::weights::{GgufWeights, SafetensorsWeights};
use crate::{ModelError, Result};

/// The offline models the set-up installs, by alias: (alias, file name, description).
pub const ALIASES: &[(&str, &str, &str)] = &[
    ("smollm2-135m", "SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2-135M-Instruct (Llama), the default"),
    ("qwen2.5-coder-0.5b", "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf", "Qwen2.5-Coder-0.5B-Instruct (Qwen2)"),
    ("qwen2.5-coder-1.5b", "Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf", "Qwen2.5-Coder-1.5B-Instruct (Qwen2), opt-in: it follows emotion prompts"),
    ("gemma-3-270m", "gemma-3-270m-q4_k_m.gguf", "Gemma 3 270M (Gemma 3), opt-in, a base model: no chat template, for hooks and parity"),
];

/// Aliases the set-up fetches only when asked: `scripts/setup.sh --model <alias>`.
pub const OPT_IN: &[&str] = &["qwen2.5-coder-1.5b", "gemma-3-270m"];

/// The alias every command uses unless told otherwise.
pub const DEFAULT_MODEL: &str = "smollm2-135m";

/// Folders searched for aliased models, in order: `$EMO_MODELS_DIR`, then `models/` under each of
/// [`crate::home::roots`] (`$EMO_HOME`, the per-user cache, the checkout's `.cache` that `scripts/setup.sh` fills).
pub fn model_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("EMO_MODELS_DIR").map(PathBuf::from).into_iter().collect();
    dirs.extend(crate::home::roots().into_iter().map(|r| r.join("models")));
    dirs
}

/// How to load: device (or devices), dtype, and how a GGUF file's quantized weights are held.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Where the weights go (the first device when `devices` lists several).
    pub device: Device,
    /// Several devices to place the model across ([`crate::placement`]): contiguous layer ranges in
    /// proportion to each one's free memory, the embedding on the first, the final norm and unembedding on
    /// the last. Empty (the default): everything on `device`.
    pub devices: Vec<Device>,
    /// Weight and activation dtype (f32 by default; bf16 is faster only on CPUs with AVX-512 bf16 or AMX, or on
    /// a GPU).
    pub kind: Kind,
    /// Dequantized (default, exact) or packed int4 ([`WeightFormat`]); ignored for safetensors folders.
    pub weights: WeightFormat,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { device: crate::device::auto(), devices: Vec::new(), kind: Kind::Float, weights: WeightFormat::Dequantized }
    }
}

impl LoadOptions {
    /// On `device` in `kind`, every weight dequantized.
    pub fn new(device: Device, kind: Kind) -> Self {
        LoadOptions { device, devices: Vec::new(), kind, weights: WeightFormat::Dequantized }
    }

    /// The same options with quantized weights held as `weights`.
    pub fn weights(self, weights: WeightFormat) -> Self {
        LoadOptions { weights, ..self }
    }

    /// The same options placing the model across `devices` (as [`crate::device::parse_devices`] reads them);
    /// one device is the same as [`LoadOptions::new`]'s, and `device` becomes the first.
    pub fn devices(self, devices: Vec<Device>) -> Self {
        let device = devices.first().copied().unwrap_or(self.device);
        LoadOptions { device, devices, ..self }
    }

    /// The devices the model goes on: `devices`, or `device` alone when that is empty.
    pub fn device_list(&self) -> Vec<Device> {
        if self.devices.is_empty() {
            vec![self.device]
        } else {
            self.devices.clone()
        }
    }
}

/// A loaded chat model.
pub struct Model {
    /// The decoder.
    pub transformer: Transformer,
    /// The tokenizer.
    pub tokenizer: Tokenizer,
    /// The model's chat template, if it has one.
    pub chat_template: Option<ChatTemplate>,
    /// Tokens that end a reply.
    pub eos_token_ids: Vec<u32>,
    /// Where it was loaded from.
    pub path: PathBuf,
}

impl Model {
    /// Loads `reference`: an alias of [`ALIASES`], a `.gguf` path, a Hugging Face model folder, or a Hugging
    /// Face repo id (`org/name`, fetched through hf-hub's cache; `HF_HOME` and `HF_TOKEN` are respected).
    pub fn load(reference: &str, opts: LoadOptions) -> Result<Model> {
        // A device that is not there is named before anything is read.
        crate::device::check_devices(&opts.device_list())?;
        let path = resolve(reference)?;
        let model = if path.is_dir() { Self::load_hf_dir(&path, opts) } else { Self::load_gguf(&path, opts) }?;
        // Loading's temporaries (file reads, dequantized blocks) leave freed pages in the C heap.
        crate::device::return_freed_pages();
        Ok(model)
    }

    /// Loads a GGUF file: weights dequantized to `opts.kind` or packed as `opts.weights` says, tokenizer and
    /// template from its metadata.
    pub fn load_gguf(path: &Path, opts: LoadOptions) -> Result<Model> {
        let gguf = GgufFile::open(path)?;
        let cfg = TransformerConfig::from_gguf(&gguf)?;
        let tokenizer = Tokenizer::from_gguf(&gguf)?;
        let mut eos = Vec::new();
        for key in ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"] {
            if let Some(id) = gguf.get(key).and_then(|v| v.as_u64()) {
                eos.push(id as u32);
            }
        }
        // A reply ends with its turn: Gemma files name `<eos>` only, while chats end turns with `<end_of_turn>`
        // (llama.cpp stops at these too). Only control tokens count, so a plain word spelled alike never stops.
        for turn_end in ["<end_of_turn>", "<|eot_id|>", "<|im_end|>", "<|end|>"] {
            if let Some(id) = tokenizer.token_to_id(turn_end).filter(|&id| tokenizer.is_special(id)) {
                eos.push(id);
            }
        }
        let placement = Placement::for_model(&cfg, opts.kind, &opts.device_list())?;
        let transformer = Transformer::load_placed(cfg.clone(), &GgufWeights::new(&gguf, cfg), placement, opts.kind, opts.weights)?;
        Self::assemble(transformer, tokenizer, eos, path)
    }

    /// Loads a Hugging Face folder: `config.json`, `*.safetensors`, `tokenizer.json`,
    /// `tokenizer_config.json`, `generation_config.json`.
    pub fn load_hf_dir(dir: &Path, opts: LoadOptions) -> Result<Model> {
        let cfg = TransformerConfig::from_hf_config(&dir.join("config.json"))?;
        let tok_cfg = dir.join("tokenizer_config.json");
        let tokenizer = Tokenizer::from_hf_files(&dir.join("tokenizer.json"), tok_cfg.exists().then_some(tok_cfg.as_path()))?;
        let mut eos = Vec::new();
        for file in ["generation_config.json", "config.json"] {
            let p = dir.join(file);
            if let Ok(text) = std::fs::read_to_string(&p) {
                let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::format(&p, format!("invalid JSON: {e}")))?;
                match v.get("eos_token_id") {
                    Some(serde_json::Value::Number(n)) => eos.extend(n.as_u64().map(|x| x as u32)),
                    Some(serde_json::Value::Array(a)) => eos.extend(a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32)),
                    _ => {}
                }
                if !eos.is_empty() {
                    break;
                }
            }
        }
        let placement = Placement::for_model(&cfg, opts.kind, &opts.device_list())?;
        let transformer = Transformer::load_placed(cfg, &SafetensorsWeights::open(dir)?, placement, opts.kind, WeightFormat::Dequantized)?;
        Self::assemble(transformer, tokenizer, eos, dir)
    }

    fn assemble(transformer: Transformer, tokenizer: Tokenizer, mut eos: Vec<u32>, path: &Path) -> Result<Model> {
        if let Some(id) = tokenizer.eos_token_id() {
            eos.push(id);
        }
        eos.sort_unstable();
        eos.dedup();
        let chat_template = match tokenizer.chat_template() {
            Some(src) => Some(ChatTemplate::new(src, tokenizer.bos_token(), tokenizer.eos_token())?),
            None => None,
        };
        Ok(Model { transformer, tokenizer, chat_template, eos_token_ids: eos, path: path.to_path_buf() })
    }

    /// The padding id used for left padding (the tokenizer's pad token, else its end-of-sequence token).
    pub fn pad_token_id(&self) -> u32 {
        self.tokenizer.pad_token_id().or(self.tokenizer.eos_token_id()).unwrap_or(0)
    }

    /// Renders a conversation with the model's chat template, ending with the assistant header. The text is
    /// for reading: tokenizing it would turn control tokens spelled in messages into real ones, which
    /// [`Model::encode_chat`] does not.
    pub fn render_chat(&self, messages: &[ChatMessage]) -> Result<String> {
        self.template()?.render(messages, true)
    }

    /// Token ids of a rendered conversation, as Hugging Face's `tok(apply_chat_template(..., tokenize=False))`
    /// gives them (the post-processor adds its tokens too: a double BOS on Llama 3, as upstream), except
    /// that message content is always text: a control token spelled in a message (`<|im_start|>`) is split
    /// like any other characters instead of opening a turn (see [`crate::chat_encode`]). The template's own
    /// markup keeps its special tokens. To mean a control token, build the ids and call
    /// [`Model::generate_ids`].
    pub fn encode_chat(&self, messages: &[ChatMessage]) -> Result<Vec<u32>> {
        self.encode_chat_continuing(messages, "")
    }

    /// [`Model::encode_chat`] with `assistant_prefix`, trusted text such as a forced answer start, written
    /// after the generation prompt (its special tokens are matched like the template's).
    pub fn encode_chat_continuing(&self, messages: &[ChatMessage], assistant_prefix: &str) -> Result<Vec<u32>> {
        crate::chat_encode::encode_conversation(&self.tokenizer, self.template()?, messages, assistant_prefix)
    }

    fn template(&self) -> Result<&ChatTemplate> {
        self.chat_template.as_ref().ok_or_else(|| {
            ModelError::Template(format!(
                "{} has no chat template (a base model?): give it one with `--chat-template FILE` or Model::with_chat_template",
                self.path.display()
            ))
        })
    }

    /// The model with `source` (Jinja, as in `tokenizer_config.json`) as its chat template, replacing the one it
    /// came with, if any: how a base model without one (Gemma 3 270M) runs the chat-shaped pipelines.
    ///
    /// ```no_run
    /// use emo_model::{ChatMessage, LoadOptions, Model};
    /// let template = std::fs::read_to_string("examples/chat_templates/gemma.jinja")?;
    /// let model = Model::load("gemma-3-270m", LoadOptions::default())?.with_chat_template(&template)?;
    /// let ids = model.encode_chat(&[ChatMessage::user("What is the capital of France?")])?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_chat_template(mut self, source: &str) -> Result<Model> {
        self.chat_template = Some(ChatTemplate::new(source, self.tokenizer.bos_token(), self.tokenizer.eos_token())?);
        Ok(self)
    }

    /// Replies to each conversation, greedily, in one batch; `cfg.eos_token_ids` defaults to the model's.
    pub fn generate_chat(&self, conversations: &[Vec<ChatMessage>], cfg: &GenerationConfig, hooks: &mut HookSet) -> Result<Vec<Reply>> {
        let prompts = conversations.iter().map(|c| self.encode_chat(c)).collect::<Result<Vec<_>>>()?;
        let generated = self.generate_ids(&prompts, cfg, hooks)?;
        generated.into_iter().map(|g| Ok(Reply { text: self.tokenizer.decode(&g.tokens, true)?, generated: g })).collect()
    }

    /// Greedy-decodes token prompts in one batch; `cfg.eos_token_ids` defaults to the model's.
    pub fn generate_ids(&self, prompts: &[Vec<u32>], cfg: &GenerationConfig, hooks: &mut HookSet) -> Result<Vec<Generated>> {
        let mut cfg = cfg.clone();
        if cfg.eos_token_ids.is_empty() {
            cfg.eos_token_ids = self.eos_token_ids.clone();
        }
        generate(&self.transformer, prompts, &cfg, self.pad_token_id(), hooks)
    }
}

/// A decoded reply.
#[derive(Clone, Debug)]
pub struct Reply {
    /// The reply text, special tokens removed.
    pub text: String,
    /// Its tokens and stop reason.
    pub generated: Generated,
}

/// Resolves a model reference to a `.gguf` file or a model folder.
pub fn resolve(reference: &str) -> Result<PathBuf> {
    if let Some((_, file, _)) = ALIASES.iter().find(|(a, _, _)| *a == reference) {
        for dir in model_dirs() {
            let p = dir.join(file);
            if p.is_file() {
                return Ok(p);
            }
        }
        return Err(ModelError::ModelNotFound {
            reference: reference.into(),
            msg: if OPT_IN.contains(&reference) {
                format!("{file} is in none of {:?}: it is opt-in, fetch it with `scripts/setup.sh --model {reference}`", model_dirs())
            } else {
                format!("{file} is in none of {:?}: {}, or set EMO_MODELS_DIR", model_dirs(), crate::home::missing(&format!("models/{file}")))
            },
        });
    }
    let p = Path::new(reference);
    if p.exists() {
        return Ok(p.to_path_buf());
    }
    if reference.ends_with(".gguf") || reference.starts_with('.') || reference.starts_with('/') {
        return Err(ModelError::ModelNotFound { reference: reference.into(), msg: "no such file or folder".into() });
    }
    if reference.split('/').count() == 2 {
        return fetch_from_hub(reference);
    }
    let aliases: Vec<&str> = ALIASES.iter().map(|(a, _, _)| *a).collect();
    Err(ModelError::ModelNotFound {
        reference: reference.into(),
        msg: format!("not an alias ({}), a path, or a Hugging Face repo id (org/name)", aliases.join(", ")),
    })
}

/// Fetches a Hugging Face repo's model files into hf-hub's cache (or finds them there) and returns the folder.
fn fetch_from_hub(repo: &str) -> Result<PathBuf> {
    let mut files = vec!["config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"];
    let cache = hf_hub::Cache::from_env();
    let cached = cache.model(repo.to_string());
    let offline_hint = |e: String| ModelError::ModelNotFound {
        reference: repo.into(),
        msg: format!(
            "could not fetch it from the Hugging Face Hub ({e}); without network access, download the model \
             folder elsewhere and pass its local path with --model /path/to/folder (or a .gguf file)"
        ),
    };
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_token(std::env::var("HF_TOKEN").ok().or_else(|| cache.token()))
        .build()
        .map_err(|e| offline_hint(e.to_string()))?
        .model(repo.to_string());
    let get = |f: &str| -> Result<PathBuf> {
        match cached.get(f) {
            Some(p) => Ok(p),
            None => api.get(f).map_err(|e| offline_hint(e.to_string())),
        }
    };
    let config = get("config.json")?;
    let index = get("model.safetensors.index.json").ok();
    match &index {
        Some(idx) => {
            let text = std::fs::read_to_string(idx).map_err(|e| ModelError::io(idx, e))?;
            let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::format(idx, format!("invalid JSON: {e}")))?;
            let mut shards: Vec<String> =
                v["weight_map"].as_object().map(|m| m.values().filter_map(|x| x.as_str().map(String::from)).collect()).unwrap_or_default();
            shards.sort();
            shards.dedup();
            for s in shards {
                get(&s)?;
            }
        }
        None => {
            files.push("model.safetensors");
        }
    }
    for f in files {
        // tokenizer_config.json and generation_config.json are optional.
        if let Err(e) = get(f) {
            if matches!(f, "config.json" | "tokenizer.json" | "model.safetensors") {
                return Err(e);
            }
        }
    }
    Ok(config.parent().map(Path::to_path_buf).unwrap_or_default())
}
