//! Byte-level BPE from GGUF (`tokenizer.ggml.model = "gpt2"`: Llama 3, Qwen, SmolLM2). The pre-tokenizer
//! split follows llama.cpp's reading of `tokenizer.ggml.pre`, which was chosen by hashing the output of the
//! model's original `tokenizer.json`, so it reproduces that tokenizer. Where transformers' own GGUF loader
//! differs (it has no entry for `smollm` and falls back to the GPT-2 split), we side with llama.cpp and the
//! original tokenizer; `pre` values neither knows fall back to the GPT-2 split, as transformers does.
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{PreTokenizerWrapper, SplitDelimiterBehavior};

use super::{Built, Meta, TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED};
use crate::gguf::GgufValue;
use crate::Result;

/// Llama 3's split: contractions, letters with one leading non-letter, numbers in groups of up to three.
const SPLIT_LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split: Llama 3's, but every digit on its own.
const SPLIT_QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen3.5's split: Qwen2's with combining marks kept inside words.
const SPLIT_QWEN35: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Mistral's Tekken split.
const SPLIT_TEKKEN: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+",
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*",
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
);
/// GPT-4o's (o200k) split, also Llama 4's.
const SPLIT_GPT4O: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
);

/// How a byte-level BPE vocabulary cuts text into words before merging.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PreSplit {
    /// GPT-2's regex (the `ByteLevel` pre-tokenizer's own).
    Gpt2,
    /// Every digit isolated first, then GPT-2's regex (StarCoder-derived vocabularies such as SmolLM).
    DigitsThenGpt2,
    /// A custom regex, each match its own word.
    Regex(&'static str),
}

/// What `tokenizer.ggml.pre` implies: the split, whether merges may be skipped for whole-word vocabulary
/// hits (llama.cpp's `ignore_merges`, also set in Llama 3's `tokenizer.json`), and llama.cpp's default for
/// `add_bos_token` when the file does not say.
#[derive(Clone, Copy, Debug)]
struct PreType {
    split: PreSplit,
    ignore_merges: bool,
    default_add_bos: bool,
}

/// Maps a `tokenizer.ggml.pre` value to its pre-tokenizer. Unknown values get GPT-2's split, which is what
/// transformers does for every value outside its table.
fn pre_type(pre: &str) -> PreType {
    let plain = |split| PreType { split, ignore_merges: false, default_add_bos: false };
    match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0" | "lfm2" | "jina-v5-nano" => {
            PreType { split: PreSplit::Regex(SPLIT_LLAMA3), ignore_merges: true, default_add_bos: true }
        }
        "dbrx" | "smaug-bpe" => plain(PreSplit::Regex(SPLIT_LLAMA3)),
        "tekken" => PreType { split: PreSplit::Regex(SPLIT_TEKKEN), ignore_merges: true, default_add_bos: true },
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" => plain(PreSplit::Regex(SPLIT_QWEN2)),
        "qwen35" => plain(PreSplit::Regex(SPLIT_QWEN35)),
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => plain(PreSplit::Regex(SPLIT_GPT4O)),
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => plain(PreSplit::DigitsThenGpt2),
        _ => plain(PreSplit::Gpt2),
    }
}

fn pre_tokenizer(split: PreSplit) -> std::result::Result<PreTokenizerWrapper, String> {
    Ok(match split {
        PreSplit::Gpt2 => ByteLevel::new(false, true, true).into(),
        PreSplit::DigitsThenGpt2 => Sequence::new(vec![Digits::new(true).into(), ByteLevel::new(false, true, true).into()]).into(),
        PreSplit::Regex(re) => {
            let split = Split::new(SplitPattern::Regex(re.to_string()), SplitDelimiterBehavior::Isolated, false)
                .map_err(|e| format!("pre-tokenizer regex does not compile: {e}"))?;
            Sequence::new(vec![split.into(), ByteLevel::new(false, true, false).into()]).into()
        }
    })
}

/// GPT-2's byte-to-character table: printable Latin-1 bytes stand for themselves, the others are moved
/// to U+0100 onwards, so that every byte has a visible, non-space character.
fn byte_alphabet() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[b as usize] = if printable {
            char::from(b)
        } else {
            let c = char::from_u32(next).unwrap_or('\u{FFFD}');
            next += 1;
            c
        };
    }
    table
}

/// The BPE model of a `gpt2` vocabulary: tokens respelled into the byte alphabet, the file's merges, the
/// pre-tokenizer `tokenizer.ggml.pre` names.
pub(super) fn build<'v, F>(meta: &Meta<'_, F>, tokens: &[&str], type_of: &dyn Fn(usize) -> i64) -> Result<Built>
where
    F: Fn(&str) -> Option<&'v GgufValue>,
{
    let merges_raw =
        meta.strings("tokenizer.ggml.merges")?.ok_or_else(|| meta.err("no `tokenizer.ggml.merges` in the metadata (needed for a gpt2 tokenizer)"))?;
    let pre = pre_type(meta.str("tokenizer.ggml.pre")?.unwrap_or("default"));

    // Control and user-defined tokens stay as written, since they are matched whole and never reached by
    // merges; a normal token outside the byte alphabet is respelled byte by byte, as transformers does.
    let alphabet = byte_alphabet();
    let in_alphabet: std::collections::HashSet<char> = alphabet.iter().copied().collect();
    let mut vocab = Vocab::with_capacity(tokens.len());
    for (i, token) in tokens.iter().enumerate() {
        let ty = type_of(i);
        let spelled = if ty == TOKEN_TYPE_CONTROL || ty == TOKEN_TYPE_USER_DEFINED || token.chars().all(|c| in_alphabet.contains(&c)) {
            (*token).to_string()
        } else {
            token.bytes().map(|b| alphabet[b as usize]).collect()
        };
        vocab.insert(spelled, i as u32);
    }
    let mut merges: Merges = Vec::with_capacity(merges_raw.len());
    for (i, merge) in merges_raw.iter().enumerate() {
        let (a, b) = merge
            .split_once(' ')
            .ok_or_else(|| meta.err(format!("`tokenizer.ggml.merges` entry {i} (`{merge}`) is not two tokens separated by a space")))?;
        merges.push((a.to_string(), b.to_string()));
    }
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(pre.ignore_merges)
        .build()
        .map_err(|e| meta.err(format!("cannot build the BPE model: {e}")))?;

    let mut inner = tokenizers::Tokenizer::new(bpe);
    inner.with_pre_tokenizer(Some(pre_tokenizer(pre.split).map_err(|e| meta.err(e))?));
    inner.with_decoder(Some(ByteLevelDecoder::default()));
    Ok(Built { inner, default_add_bos: pre.default_add_bos, keeps_user_defined: |_| true })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pre_split_compiles() {
        for pre in ["llama-bpe", "dbrx", "tekken", "qwen2", "qwen35", "gpt-4o", "smollm", "gpt2", "default"] {
            let split = pre_type(pre).split;
            pre_tokenizer(split).unwrap_or_else(|e| panic!("{pre}: {e}"));
        }
    }

    #[test]
    fn byte_alphabet_is_a_bijection_onto_visible_chars() {
        let table = byte_alphabet();
        let distinct: std::collections::HashSet<char> = table.iter().copied().collect();
        assert_eq!(distinct.len(), 256);
        assert_eq!(table[b' ' as usize], 'Ġ');
        assert_eq!(table[b'\n' as usize], 'Ċ');
        assert_eq!(table[b'a' as usize], 'a');
    }
}
