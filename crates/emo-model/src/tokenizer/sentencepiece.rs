//! Gemma's SentencePiece vocabulary from GGUF (`tokenizer.ggml.model = "llama"` in a `gemma*` file).
//!
//! The file lists the pieces and their scores but no merges. Hugging Face transformers rebuilds a BPE model
//! from it with byte fallback, spaces written as `▁` by the normalizer and no prefix space, recovering the
//! merges from the vocabulary: every split of a piece into two pieces that are both in the vocabulary is a
//! merge, ranked by the position of the merged piece in the file (Gemma's order of merges; its scores are
//! not always that order). We build the same model, so that token ids equal Hugging Face's.
use std::collections::HashMap;

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence;
use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::normalizers::replace::Replace;
use tokenizers::DecoderWrapper;

use super::{Built, Meta};
use crate::gguf::GgufValue;
use crate::Result;

/// SentencePiece's spelling of a space.
const SPACE: &str = "\u{2581}";

/// The BPE model of a Gemma vocabulary, with its normalizer and decoder.
pub(super) fn build_gemma<'v, F>(meta: &Meta<'_, F>, tokens: &[&str]) -> Result<Built>
where
    F: Fn(&str) -> Option<&'v GgufValue>,
{
    // Runs of spaces are stored with real spaces; the normalizer turns text spaces into `▁`,
    // so they are looked up as `▁▁...` (Hugging Face respells them the same way).
    let pieces: Vec<String> = tokens.iter().map(|t| if is_space_run(t) { SPACE.repeat(t.chars().count()) } else { (*t).to_string() }).collect();
    let merges = merges_by_position(&pieces);
    let mut vocab = Vocab::with_capacity(pieces.len());
    for (i, piece) in pieces.iter().enumerate() {
        vocab.insert(piece.clone(), i as u32);
    }
    let mut bpe = BPE::builder().vocab_and_merges(vocab, merges).byte_fallback(true).fuse_unk(true);
    if let Some(unk) = meta.token_id("tokenizer.ggml.unknown_token_id", tokens.len())? {
        bpe = bpe.unk_token(pieces[unk as usize].clone());
    }
    let bpe = bpe.build().map_err(|e| meta.err(format!("cannot build the SentencePiece BPE model: {e}")))?;

    let mut inner = tokenizers::Tokenizer::new(bpe);
    let replace = |from: &str, to: &str| Replace::new(from, to).map_err(|e| meta.err(format!("cannot build the space replacement: {e}")));
    inner.with_normalizer(Some(replace(" ", SPACE)?));
    let decoder = Sequence::new(vec![
        DecoderWrapper::Replace(replace(SPACE, " ")?),
        DecoderWrapper::ByteFallback(ByteFallback::default()),
        DecoderWrapper::Fuse(Fuse::default()),
    ]);
    inner.with_decoder(Some(decoder));
    // A user-defined run of spaces is reached through `▁` by the model; adding it whole would split text
    // differently from Hugging Face, which leaves it out.
    Ok(Built { inner, default_add_bos: true, keeps_user_defined: |t| !is_space_run(t) })
}

/// Whether `token` is whitespace with at least one space in it (how Gemma files store runs of spaces).
fn is_space_run(token: &str) -> bool {
    token.contains(' ') && token.trim().is_empty()
}

/// Every split of a piece into two pieces of the vocabulary, best first: by the merged piece's position in
/// the vocabulary, then longer left part first (transformers' `generate_merges` with positions as scores).
fn merges_by_position(pieces: &[String]) -> Merges {
    // The last position of a piece listed twice, as a dictionary built in order keeps it.
    let mut position: HashMap<&str, usize> = HashMap::with_capacity(pieces.len());
    for (i, p) in pieces.iter().enumerate() {
        position.insert(p.as_str(), i);
    }
    let mut seen = std::collections::HashSet::with_capacity(pieces.len());
    let mut ranked: Vec<(usize, usize, usize, &str, &str)> = Vec::new();
    for piece in pieces {
        if !seen.insert(piece.as_str()) {
            continue;
        }
        let rank = position[piece.as_str()];
        let n_chars = piece.chars().count();
        for (k, (cut, _)) in piece.char_indices().skip(1).enumerate() {
            let (left, right) = piece.split_at(cut);
            if position.contains_key(left) && position.contains_key(right) {
                // k + 1 characters on the left.
                ranked.push((rank, k + 1, n_chars - k - 1, left, right));
            }
        }
    }
    // Python's descending sort on (-position, len(left), len(right)): ascending position, longer parts first.
    ranked.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)).then(b.2.cmp(&a.2)));
    ranked.into_iter().map(|(_, _, _, l, r)| (l.to_string(), r.to_string())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_follow_the_merged_pieces_position() {
        let pieces: Vec<String> = ["<unk>", "a", "b", "c", "ab", "bc", "abc"].iter().map(|s| s.to_string()).collect();
        let merges = merges_by_position(&pieces);
        let want: Vec<(String, String)> =
            [("a", "b"), ("b", "c"), ("ab", "c"), ("a", "bc")].iter().map(|(l, r)| (l.to_string(), r.to_string())).collect();
        assert_eq!(merges, want);
    }

    #[test]
    fn space_runs_are_recognised() {
        assert!(is_space_run("  ") && is_space_run(" \t") && is_space_run(" "));
        assert!(!is_space_run("\n\n") && !is_space_run(" a") && !is_space_run("\u{2581}"));
    }
}
