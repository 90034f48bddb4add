//! Text <-> token ids, built either from a GGUF file's `tokenizer.ggml.*` metadata or from a Hugging Face
//! folder (`tokenizer.json` + `tokenizer_config.json`), on top of the `tokenizers` crate.
//!
//! From GGUF two vocabulary kinds are supported: byte-level BPE (`tokenizer.ggml.model = "gpt2"`, used by
//! Llama 3, Qwen and SmolLM2; [`byte_level`]) and Gemma's SentencePiece vocabulary (`"llama"` in a Gemma
//! file; [`sentencepiece`]). Both reproduce what Hugging Face transformers builds from the same file, which
//! the parity tests compare against.
use std::path::{Path, PathBuf};

use tokenizers::{AddedToken, PostProcessorWrapper};

use crate::gguf::GgufValue;
use crate::{ModelError, Result};

mod byte_level;
mod sentencepiece;

/// GGUF `tokenizer.ggml.token_type` of a control token (`<|im_start|>`): matched whole, special.
const TOKEN_TYPE_CONTROL: i64 = 3;
/// GGUF `tokenizer.ggml.token_type` of a user-defined token (`<tool_call>`): matched whole, not special.
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// A vocabulary model built from GGUF metadata, before the special tokens are added.
struct Built {
    inner: tokenizers::Tokenizer,
    /// llama.cpp's default for `add_bos_token` when the file does not say.
    default_add_bos: bool,
    /// Whether a USER_DEFINED token is added as a whole-match token (false where the model spells it
    /// differently in its vocabulary, as Gemma's runs of spaces).
    keeps_user_defined: fn(&str) -> bool,
}

/// A tokenizer with its special tokens and chat template.
///
/// Cheap to share across threads (`&Tokenizer` is all encoding needs).
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    source: PathBuf,
    vocab_size: usize,
    bos: Option<(String, u32)>,
    eos: Option<(String, u32)>,
    pad_id: Option<u32>,
    chat_template: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("source", &self.source)
            .field("vocab_size", &self.vocab_size)
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("pad_id", &self.pad_id)
            .field("has_chat_template", &self.chat_template.is_some())
            .finish()
    }
}

/// Reads the typed values the tokenizer needs from GGUF metadata, naming the file and key on error.
pub(super) struct Meta<'a, F> {
    path: &'a Path,
    get: F,
}

impl<'a, 'v, F: Fn(&str) -> Option<&'v GgufValue>> Meta<'a, F> {
    pub(super) fn err(&self, msg: impl Into<String>) -> ModelError {
        ModelError::Tokenizer { path: self.path.to_path_buf(), msg: msg.into() }
    }

    pub(super) fn str(&self, key: &str) -> Result<Option<&'v str>> {
        match (self.get)(key) {
            None => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| self.err(format!("metadata key `{key}` is not a string"))),
        }
    }

    fn bool(&self, key: &str) -> Result<Option<bool>> {
        match (self.get)(key) {
            None => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or_else(|| self.err(format!("metadata key `{key}` is not a bool"))),
        }
    }

    fn array(&self, key: &str) -> Result<Option<&'v [GgufValue]>> {
        match (self.get)(key) {
            None => Ok(None),
            Some(v) => v.as_array().map(Some).ok_or_else(|| self.err(format!("metadata key `{key}` is not an array"))),
        }
    }

    pub(super) fn strings(&self, key: &str) -> Result<Option<Vec<&'v str>>> {
        let Some(items) = self.array(key)? else { return Ok(None) };
        items
            .iter()
            .enumerate()
            .map(|(i, v)| v.as_str().ok_or_else(|| self.err(format!("metadata key `{key}`: entry {i} is not a string"))))
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// A token id key, checked against the vocabulary so that a bad file cannot index out of range later.
    pub(super) fn token_id(&self, key: &str, n_tokens: usize) -> Result<Option<u32>> {
        let Some(v) = (self.get)(key) else { return Ok(None) };
        let id = v.as_u64().ok_or_else(|| self.err(format!("metadata key `{key}` is not an unsigned integer")))?;
        if id >= n_tokens as u64 {
            return Err(self.err(format!("metadata key `{key}` = {id} is outside the vocabulary of {n_tokens} tokens")));
        }
        Ok(Some(id as u32))
    }
}

impl Tokenizer {
    /// Builds the tokenizer a GGUF file describes in its `tokenizer.ggml.*` metadata (see
    /// [`Tokenizer::from_gguf_metadata`]).
    pub fn from_gguf(gguf: &crate::gguf::GgufFile) -> Result<Self> {
        Self::from_gguf_metadata(gguf.path(), |key| gguf.get(key))
    }

    /// Builds a tokenizer from GGUF-style metadata looked up through `get`; `path` only names the source in
    /// errors. This is what [`Tokenizer::from_gguf`] does with a file; it is public so that metadata from
    /// elsewhere (or made up, in tests) can be used too.
    ///
    /// `tokenizer.ggml.model` must be `gpt2` (byte-level BPE) or, in a Gemma file, `llama` (SentencePiece).
    /// Tokens of type CONTROL become special added tokens and USER_DEFINED ones plain added tokens, so both are
    /// matched whole in text.
    /// BOS (EOS) is added by [`Tokenizer::encode`] with `add_special_tokens` only when
    /// `tokenizer.ggml.add_bos_token` (`add_eos_token`) is true; when absent, llama.cpp's default for the
    /// vocabulary applies (true for Llama 3's pre-tokenizer and for SentencePiece, false otherwise).
    pub fn from_gguf_metadata<'v, F>(path: &Path, get: F) -> Result<Self>
    where
        F: Fn(&str) -> Option<&'v GgufValue>,
    {
        let meta = Meta { path, get };
        let model =
            meta.str("tokenizer.ggml.model")?.ok_or_else(|| meta.err("no `tokenizer.ggml.model` in the metadata: the file has no tokenizer"))?;
        let tokens = meta.strings("tokenizer.ggml.tokens")?.ok_or_else(|| meta.err("no `tokenizer.ggml.tokens` in the metadata"))?;
        let n_tokens = tokens.len();
        if n_tokens == 0 || n_tokens > u32::MAX as usize {
            return Err(meta.err(format!("`tokenizer.ggml.tokens` has {n_tokens} entries")));
        }
        let token_types: Option<Vec<i64>> = match meta.array("tokenizer.ggml.token_type")? {
            None => None,
            Some(items) => {
                if items.len() != n_tokens {
                    return Err(
                        meta.err(format!("`tokenizer.ggml.token_type` has {} entries but `tokenizer.ggml.tokens` has {n_tokens}", items.len()))
                    );
                }
                let types = items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| v.as_i64().ok_or_else(|| meta.err(format!("`tokenizer.ggml.token_type` entry {i} is not an integer"))))
                    .collect::<Result<Vec<_>>>()?;
                Some(types)
            }
        };
        let type_of = |i: usize| token_types.as_ref().map_or(1, |t| t[i]);
        let arch = meta.str("general.architecture")?.unwrap_or("");
        let Built { mut inner, default_add_bos, keeps_user_defined } = match model {
            "gpt2" => byte_level::build(&meta, &tokens, &type_of)?,
            "llama" if arch.starts_with("gemma") => sentencepiece::build_gemma(&meta, &tokens)?,
            "llama" => {
                return Err(meta.err(format!(
                    "SentencePiece vocabularies (tokenizer.ggml.model `llama`) are supported in Gemma files only, this one is `{arch}`"
                )))
            }
            _ => {
                return Err(meta.err(format!(
                "unsupported tokenizer model `{model}` (tokenizer.ggml.model); supported: `gpt2` (byte-level BPE), `llama` (Gemma's SentencePiece)"
            )))
            }
        };

        let mut special = Vec::new();
        let mut user_defined = Vec::new();
        for (i, token) in tokens.iter().enumerate() {
            match type_of(i) {
                TOKEN_TYPE_CONTROL => special.push(AddedToken::from(token.to_string(), true).normalized(false)),
                TOKEN_TYPE_USER_DEFINED if keeps_user_defined(token) => {
                    user_defined.push(AddedToken::from(token.to_string(), false).normalized(false))
                }
                _ => {}
            }
        }
        inner.add_special_tokens(&special);
        inner.add_tokens(&user_defined);

        let named =
            |key: &str| -> Result<Option<(String, u32)>> { Ok(meta.token_id(key, n_tokens)?.map(|id| (tokens[id as usize].to_string(), id))) };
        let bos = named("tokenizer.ggml.bos_token_id")?;
        let eos = named("tokenizer.ggml.eos_token_id")?;
        let pad_id = meta.token_id("tokenizer.ggml.padding_token_id", n_tokens)?;
        let add_bos = meta.bool("tokenizer.ggml.add_bos_token")?.unwrap_or(default_add_bos);
        let add_eos = meta.bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false);
        let bos_added = if add_bos {
            Some(bos.clone().ok_or_else(|| meta.err("`tokenizer.ggml.add_bos_token` is true but there is no `tokenizer.ggml.bos_token_id`"))?)
        } else {
            None
        };
        let eos_added = if add_eos {
            Some(eos.clone().ok_or_else(|| meta.err("`tokenizer.ggml.add_eos_token` is true but there is no `tokenizer.ggml.eos_token_id`"))?)
        } else {
            None
        };
        if bos_added.is_some() || eos_added.is_some() {
            let processor = bos_eos_processor(bos_added.as_ref(), eos_added.as_ref()).map_err(|e| meta.err(e))?;
            inner.with_post_processor(Some(processor));
        }
        let chat_template = meta.str("tokenizer.chat_template")?.map(str::to_string);
        // Compiled here once so that a damaged template is reported with the file and key; the model
        // compiles it again with its special tokens, where the error could name neither.
        if let Some(src) = &chat_template {
            crate::chat::ChatTemplate::new(src, None, None).map_err(|e| meta.err(format!("metadata key `tokenizer.chat_template`: {e}")))?;
        }

        Ok(Self { inner, source: path.to_path_buf(), vocab_size: n_tokens, bos, eos, pad_id, chat_template })
    }

    /// Loads a Hugging Face tokenizer: `tokenizer.json` for the pipeline (its post-processor decides which
    /// special tokens `encode(.., true)` adds), and `tokenizer_config.json`, when given, for `bos_token`,
    /// `eos_token`, `pad_token` and `chat_template`. The template may be a string or a list of
    /// `{name, template}`, of which the one named `default` is used; when the config has none, a
    /// `chat_template.jinja` (or `chat_template.json`) next to it is read, as transformers does.
    pub fn from_hf_files(tokenizer_json: &Path, tokenizer_config_json: Option<&Path>) -> Result<Self> {
        let err = |path: &Path, msg: String| ModelError::Tokenizer { path: path.to_path_buf(), msg };
        if !tokenizer_json.is_file() {
            return Err(err(tokenizer_json, "file not found".into()));
        }
        let inner = tokenizers::Tokenizer::from_file(tokenizer_json).map_err(|e| err(tokenizer_json, format!("cannot load tokenizer.json: {e}")))?;
        let vocab_size = inner.get_vocab(true).values().max().map_or(0, |&m| m as usize + 1);
        let mut tok = Self { inner, source: tokenizer_json.to_path_buf(), vocab_size, bos: None, eos: None, pad_id: None, chat_template: None };
        let template_dir = tokenizer_config_json.unwrap_or(tokenizer_json).parent().map(Path::to_path_buf);
        if let Some(config_path) = tokenizer_config_json {
            let text = std::fs::read_to_string(config_path).map_err(|e| ModelError::io(config_path, e))?;
            let config: serde_json::Value = serde_json::from_str(&text).map_err(|e| err(config_path, format!("invalid JSON: {e}")))?;
            let special = |name: &str| -> Result<Option<(String, u32)>> {
                let Some(content) = special_token_content(&config, name).map_err(|m| err(config_path, m))? else {
                    return Ok(None);
                };
                let id = tok
                    .inner
                    .token_to_id(&content)
                    .ok_or_else(|| err(config_path, format!("{name} `{content}` is not in the vocabulary of {}", tokenizer_json.display())))?;
                Ok(Some((content, id)))
            };
            let bos = special("bos_token")?;
            let eos = special("eos_token")?;
            let pad = special("pad_token")?;
            tok.bos = bos;
            tok.eos = eos;
            tok.pad_id = pad.map(|(_, id)| id);
            tok.chat_template = config_chat_template(&config).map_err(|m| err(config_path, m))?;
        }
        if tok.chat_template.is_none() {
            if let Some(dir) = template_dir {
                tok.chat_template = sibling_chat_template(&dir)?;
            }
        }
        Ok(tok)
    }

    fn err(&self, msg: impl Into<String>) -> ModelError {
        ModelError::Tokenizer { path: self.source.clone(), msg: msg.into() }
    }

    /// Token ids of `text`. With `add_special_tokens` the post-processor adds its tokens (BOS for Llama 3),
    /// like calling a Hugging Face tokenizer on the text; special tokens written in the text
    /// (`<|im_start|>`) are matched whole either way.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, add_special_tokens).map_err(|e| self.err(format!("encode: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids of `text` read as plain text: special and added tokens spelled in it (`<|im_start|>`) are
    /// not matched but split like any other characters, and nothing is added around it. This is how
    /// untrusted text (a chat message's content) must be encoded; [`crate::Model::encode_chat`] does it for
    /// every message. A caller who means a control token passes its id, not its spelling.
    pub fn encode_text(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.plain(text)?.get_ids().to_vec())
    }

    /// The normalizer, pre-tokenizer and model on `text`, skipping the added vocabulary that
    /// `tokenizers::Tokenizer::encode` matches first.
    fn plain(&self, text: &str) -> Result<tokenizers::Encoding> {
        use tokenizers::{Model as _, Normalizer as _, PreTokenizer as _};
        let run = || -> tokenizers::Result<tokenizers::Encoding> {
            let mut normalized = tokenizers::NormalizedString::from(text);
            if let Some(n) = self.inner.get_normalizer() {
                n.normalize(&mut normalized)?;
            }
            let mut pre = tokenizers::PreTokenizedString::from(normalized);
            if let Some(p) = self.inner.get_pre_tokenizer() {
                p.pre_tokenize(&mut pre)?;
            }
            let model = self.inner.get_model();
            pre.tokenize(|n| model.tokenize(n.get()))?;
            pre.into_encoding(None, 0, tokenizers::OffsetType::Byte)
        };
        run().map_err(|e| self.err(format!("encode: {e}")))
    }

    /// [`Tokenizer::encode`] with `add_special_tokens`, and the byte ranges of `text` where it matched an
    /// added or special token.
    pub(crate) fn encode_marking_added(&self, text: &str) -> Result<(Vec<u32>, Vec<std::ops::Range<usize>>)> {
        let enc = self.inner.encode(text, true).map_err(|e| self.err(format!("encode: {e}")))?;
        let added = self.inner.get_added_vocabulary().get_added_tokens_decoder();
        let ranges = enc
            .get_ids()
            .iter()
            .zip(enc.get_offsets())
            // Tokens the post-processor adds (BOS) come from no text: their ranges are empty.
            .filter(|&(id, &(start, end))| start < end && added.contains_key(id))
            .map(|(_, &(start, end))| start..end)
            .collect();
        Ok((enc.get_ids().to_vec(), ranges))
    }

    /// Token ids of a text cut into pieces: markup pieces (`plain == false`) are encoded as
    /// [`Tokenizer::encode`] does, matching special tokens, plain ones as [`Tokenizer::encode_text`]; the
    /// post-processor then adds its tokens (BOS) once, around the whole.
    pub(crate) fn encode_pieces(&self, pieces: &[(&str, bool)]) -> Result<Vec<u32>> {
        let encodings = pieces
            .iter()
            .filter(|(text, _)| !text.is_empty())
            .map(|&(text, plain)| if plain { self.plain(text) } else { self.inner.encode(text, false).map_err(|e| self.err(format!("encode: {e}"))) })
            .collect::<Result<Vec<_>>>()?;
        let merged = tokenizers::Encoding::merge(encodings, false);
        let enc = self.inner.post_process(merged, None, true).map_err(|e| self.err(format!("encode: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Every added token, special (`<|im_start|>`) or not (`<tool_call>`): its id and spelling, by id.
    pub fn added_tokens(&self) -> Vec<(u32, String)> {
        let mut tokens: Vec<(u32, String)> =
            self.inner.get_added_vocabulary().get_added_tokens_decoder().iter().map(|(&id, t)| (id, t.content.clone())).collect();
        tokens.sort_unstable();
        tokens
    }

    /// The first added or special token (by id) whose spelling occurs in `text`, if any.
    pub fn added_token_in(&self, text: &str) -> Option<String> {
        self.added_tokens().into_iter().map(|(_, t)| t).find(|t| !t.is_empty() && text.contains(t.as_str()))
    }

    /// [`Tokenizer::encode`] on many texts, in parallel.
    pub fn encode_batch(&self, texts: &[String], add_special_tokens: bool) -> Result<Vec<Vec<u32>>> {
        let inputs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let encs = self.inner.encode_batch(inputs, add_special_tokens).map_err(|e| self.err(format!("encode_batch: {e}")))?;
        Ok(encs.into_iter().map(|e| e.get_ids().to_vec()).collect())
    }

    /// The text of `ids`; with `skip_special_tokens`, special tokens are left out. Bytes that do not form
    /// valid UTF-8 (a character cut between tokens) become U+FFFD. Ids outside the vocabulary are an error.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            return Err(self.err(format!("decode: token id {bad} is outside the vocabulary of {} tokens", self.vocab_size)));
        }
        self.inner.decode(ids, skip_special_tokens).map_err(|e| self.err(format!("decode: {e}")))
    }

    /// The id of a token as spelled in the vocabulary (byte-level spelling, e.g. `Ġworld`), or of an added
    /// token (`<|im_end|>`).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Whether `id` is a special (control) token, such as `<|im_end|>` or `<end_of_turn>`.
    pub fn is_special(&self, id: u32) -> bool {
        self.inner.get_added_vocabulary().get_added_tokens_decoder().get(&id).is_some_and(|t| t.special)
    }

    /// The vocabulary spelling of a token id.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Number of token ids: the GGUF token list's length (the embedding's row count), or for
    /// `tokenizer.json` one more than the largest id, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The beginning-of-sequence token's text, as the chat template's `bos_token` sees it.
    pub fn bos_token(&self) -> Option<&str> {
        self.bos.as_ref().map(|(t, _)| t.as_str())
    }

    /// The beginning-of-sequence token's id.
    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos.as_ref().map(|&(_, id)| id)
    }

    /// The end-of-sequence token's text, as the chat template's `eos_token` sees it.
    pub fn eos_token(&self) -> Option<&str> {
        self.eos.as_ref().map(|(t, _)| t.as_str())
    }

    /// The end-of-sequence token's id.
    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos.as_ref().map(|&(_, id)| id)
    }

    /// The padding token's id, if the model names one.
    pub fn pad_token_id(&self) -> Option<u32> {
        self.pad_id
    }

    /// The model's Jinja chat template source, if it has one (see [`crate::chat::ChatTemplate`]).
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }
}

/// A `TemplateProcessing` post-processor adding BOS before and/or EOS after each sequence. Built through
/// serde rather than the string template syntax, which would misread tokens containing spaces or colons.
fn bos_eos_processor(bos: Option<&(String, u32)>, eos: Option<&(String, u32)>) -> std::result::Result<PostProcessorWrapper, String> {
    use serde_json::json;
    let piece = |t: &(String, u32), type_id: u32| json!({"SpecialToken": {"id": t.0, "type_id": type_id}});
    let seq = |id: &str, type_id: u32| json!({"Sequence": {"id": id, "type_id": type_id}});
    let mut single = Vec::new();
    let mut pair = Vec::new();
    for (pieces, seqs) in [(&mut single, vec![("A", 0)]), (&mut pair, vec![("A", 0), ("B", 1)])] {
        for (id, type_id) in seqs {
            pieces.extend(bos.map(|t| piece(t, type_id)));
            pieces.push(seq(id, type_id));
            pieces.extend(eos.map(|t| piece(t, type_id)));
        }
    }
    let mut special = serde_json::Map::new();
    for t in bos.into_iter().chain(eos) {
        special.insert(t.0.clone(), json!({"id": t.0, "ids": [t.1], "tokens": [t.0]}));
    }
    let value = json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": special});
    serde_json::from_value(value).map_err(|e| format!("cannot build the BOS/EOS post-processor: {e}"))
}

/// A special token in `tokenizer_config.json`: a string, an `AddedToken` object with `content`, or null.
fn special_token_content(config: &serde_json::Value, name: &str) -> std::result::Result<Option<String>, String> {
    match config.get(name) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(serde_json::Value::Object(o)) => match o.get("content") {
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            _ => Err(format!("`{name}` is an object without a string `content`")),
        },
        Some(other) => Err(format!("`{name}` is neither a string nor a token object: {other}")),
    }
}

/// `chat_template` from `tokenizer_config.json`: a string, or a list of named templates of which
/// `default` is the one `apply_chat_template` uses when no name is given.
fn config_chat_template(config: &serde_json::Value) -> std::result::Result<Option<String>, String> {
    match config.get("chat_template") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(serde_json::Value::Array(items)) => {
            let mut names = Vec::new();
            for item in items {
                let name = item.get("name").and_then(|n| n.as_str());
                let template = item.get("template").and_then(|t| t.as_str());
                match (name, template) {
                    (Some("default"), Some(t)) => return Ok(Some(t.to_string())),
                    (Some(n), Some(_)) => names.push(n.to_string()),
                    _ => return Err("`chat_template` list entries must be {\"name\": string, \"template\": string}".into()),
                }
            }
            Err(format!("`chat_template` lists no template named `default` (names: {})", names.join(", ")))
        }
        Some(_) => Err("`chat_template` is neither a string nor a list of {name, template}".into()),
    }
}

/// Newer transformers versions save the template beside the config: `chat_template.jinja` (raw source)
/// or `chat_template.json` (`{"chat_template": ...}`).
fn sibling_chat_template(dir: &Path) -> Result<Option<String>> {
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        return std::fs::read_to_string(&jinja).map(Some).map_err(|e| ModelError::io(&jinja, e));
    }
    let json = dir.join("chat_template.json");
    if json.is_file() {
        let text = std::fs::read_to_string(&json).map_err(|e| ModelError::io(&json, e))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| ModelError::Tokenizer { path: json.clone(), msg: format!("invalid JSON: {e}") })?;
        return config_chat_template(&value).map_err(|msg| ModelError::Tokenizer { path: json, msg });
    }
    Ok(None)
}
