//! Where the set-up's files are found at run time — the offline models, the sentence encoder, the lexicon,
//! the figures' font — so that a program that depends on these crates from elsewhere finds them too.
//!
//! A file `<rel>` (for example `models/SmolLM2-135M-Instruct.Q8_0.gguf` or `lexicon/nrc_en.json`) is looked
//! up under each root in turn:
//! 1. `$EMO_HOME`, when set;
//! 2. the per-user cache, `$XDG_CACHE_HOME/emo-circuits` or `~/.cache/emo-circuits`;
//! 3. the `.cache/` of the checkout these crates were built from, when it still exists (what
//!    `scripts/setup.sh` fills).
//!
//! `EMO_HOME=/some/folder scripts/setup.sh` installs everything into that folder.
use std::path::{Path, PathBuf};

/// The variable naming a folder that holds `models/`, `lexicon/` and `fonts/`.
pub const HOME_ENV: &str = "EMO_HOME";

/// The roots searched, in order (see the module docs); folders that do not exist are left out, except
/// `$EMO_HOME`, which is always first when set.
pub fn roots() -> Vec<PathBuf> {
    let mut roots = Vec::new();
    if let Some(h) = std::env::var_os(HOME_ENV).filter(|h| !h.is_empty()) {
        roots.push(PathBuf::from(h));
    }
    let user = std::env::var_os("XDG_CACHE_HOME")
        .filter(|c| !c.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .map(|c| c.join("emo-circuits"));
    roots.extend(user.filter(|u| u.is_dir()));
    let checkout = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cache");
    if checkout.is_dir() {
        roots.push(checkout.canonicalize().unwrap_or(checkout));
    }
    roots
}

/// Every place `rel` is looked for, in order.
pub fn candidates(rel: &str) -> Vec<PathBuf> {
    roots().into_iter().map(|r| r.join(rel)).collect()
}

/// The first existing `<root>/<rel>`; when there is none, where it would go first (so that the error of
/// opening it names a sensible path — pair it with [`missing`]).
pub fn locate(rel: &str) -> PathBuf {
    let all = candidates(rel);
    all.iter().find(|p| p.exists()).cloned().or_else(|| all.into_iter().next()).unwrap_or_else(|| PathBuf::from(rel))
}

/// What to tell a user when `rel` is nowhere: the places searched and how to fill one.
pub fn missing(rel: &str) -> String {
    let searched: Vec<String> = candidates(rel).iter().map(|p| p.display().to_string()).collect();
    let searched = if searched.is_empty() { "no folder (none of the roots exists)".to_string() } else { searched.join(", ") };
    format!(
        "{rel} was looked for in {searched}; run scripts/setup.sh from an emotion-circuits checkout (it downloads \
         the offline files; `{HOME_ENV}=DIR scripts/setup.sh` puts them in DIR), or set {HOME_ENV} to a folder that holds it"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emo_home_comes_first_and_the_hint_names_it() {
        // The only test in this crate that sets the variable; the others do not read it.
        let dir = std::env::temp_dir().join(format!("emo-home-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("lexicon")).unwrap();
        std::fs::write(dir.join("lexicon/x.json"), "{}").unwrap();
        std::env::set_var(HOME_ENV, &dir);
        assert_eq!(roots()[0], dir);
        assert_eq!(locate("lexicon/x.json"), dir.join("lexicon/x.json"));
        let hint = missing("lexicon/absent.json");
        assert!(hint.contains(&dir.join("lexicon/absent.json").display().to_string()) && hint.contains("EMO_HOME"), "{hint}");
        assert_eq!(locate("lexicon/absent.json"), dir.join("lexicon/absent.json"));
        std::env::remove_var(HOME_ENV);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
