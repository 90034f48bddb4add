//! The project's own SEV-style data obeys the rules it was written to: 8 themes x 20 scenarios x 3 events
//! per split, first-person neutral scenarios of 12-25 words, minimally different events of similar length,
//! no explicit emotion words, no repeated scenario within or across splits (nor with the paper's files).
mod common;
use std::collections::HashSet;

use emo_data::{Dataset, Split, Valence};

const THEMES: [(&str, &str); 8] = [
    ("Work/Job", "work"),
    ("School/Academia", "school"),
    ("Personal relationships", "relation"),
    ("Customer service/Shopping", "shopping"),
    ("Public services/Administration", "administration"),
    ("Health/Medical", "health"),
    ("Housing/Living facilities", "living"),
    ("Travel/Transportation", "travel"),
];

/// Explicit emotion words and close synonyms, with their common forms; matched as whole words.
const BANNED: &str = "happy happier happiest happily happiness unhappy unhappiness sad sadder saddest sadly sadness \
    saddened angry angrier angriest angrily anger angered afraid fear fears feared fearful fearfully scared scare \
    scares scary surprised surprise surprises surprising surprisingly disgusted disgust disgusts disgusting \
    disgustingly glad gladly furious furiously fury terrified terrify terrifying terror thrilled thrilling thrill \
    upset upsetting joy joyful joyous delighted delight delightful pleased cheerful elated ecstatic excited \
    exciting excitement annoyed annoying irritated irritating mad outraged outrage enraged rage frustrated \
    frustrating frustration resentful resent livid anxious anxiety worried worry worrying nervous panic panicked \
    frightened frightening dread dreading horrified horror shocked shocking astonished astonishing amazed amazing \
    stunned startled gross revolted revolting repulsed repulsive nauseated sickened appalled sorrow sorrowful \
    grief grieving depressed miserable heartbroken gloomy melancholy devastated";

fn words(s: &str) -> usize {
    s.split_whitespace().count()
}

fn normalise(s: &str) -> String {
    s.to_lowercase().split_whitespace().collect::<Vec<_>>().join(" ").trim_end_matches('.').to_string()
}

#[test]
fn structure_ids_and_lengths() {
    let ds = Dataset::builtin();
    for split in [Split::Sev, Split::Test] {
        let items = ds.split(split);
        assert_eq!(items.len(), 160, "{split}");
        for (t, (theme, prefix)) in THEMES.iter().enumerate() {
            let of_theme: Vec<_> = items.iter().filter(|s| s.theme == *theme).collect();
            assert_eq!(of_theme.len(), 20, "{split} {theme}");
            for (k, s) in of_theme.iter().enumerate() {
                let id = match split {
                    Split::Sev => format!("{prefix}_{k:02}"),
                    Split::Test => format!("{prefix}_test_{k:02}"),
                };
                assert_eq!(s.skeleton_id, id, "{split} theme {t}");
            }
        }
        for s in items {
            let n = words(&s.scenario);
            assert!((12..=25).contains(&n), "{}: scenario has {n} words", s.skeleton_id);
            let first = s.scenario.split_whitespace().next().unwrap_or("");
            assert!(["I", "My", "I'm", "I've", "I'd"].contains(&first), "{}: not first person: {}", s.skeleton_id, s.scenario);
            let lens: Vec<usize> = Valence::ALL.iter().map(|&v| words(s.events.get(v))).collect();
            let (lo, hi) = (*lens.iter().min().unwrap(), *lens.iter().max().unwrap());
            assert!(hi as f64 <= 1.2 * lo as f64, "{}: event lengths {lens:?} differ by more than 20%", s.skeleton_id);
            let distinct: HashSet<String> = Valence::ALL.iter().map(|&v| normalise(s.events.get(v))).collect();
            assert_eq!(distinct.len(), 3, "{}: repeated event", s.skeleton_id);
        }
    }
}

#[test]
fn no_explicit_emotion_words() {
    let banned: HashSet<&str> = BANNED.split_whitespace().collect();
    let ds = Dataset::builtin();
    for s in ds.sev.iter().chain(&ds.test) {
        for text in [s.scenario.as_str(), &s.events.positive, &s.events.neutral, &s.events.negative] {
            for w in text.split(|c: char| !c.is_alphabetic()).filter(|w| !w.is_empty()) {
                assert!(!banned.contains(w.to_lowercase().as_str()), "{}: `{w}` in \"{text}\"", s.skeleton_id);
            }
        }
    }
}

#[test]
fn no_scenario_repeats_within_or_across_splits() {
    let ds = Dataset::builtin();
    let mut seen = HashSet::new();
    for s in ds.sev.iter().chain(&ds.test) {
        assert!(seen.insert(normalise(&s.scenario)), "{}: scenario repeated: {}", s.skeleton_id, s.scenario);
    }
    if let Some(upstream) = common::upstream("sev.jsonl") {
        let paper = Dataset::load_dir(&upstream).unwrap();
        for s in paper.sev.iter().chain(&paper.test) {
            assert!(!seen.contains(&normalise(&s.scenario)), "copied from the paper: {}", s.scenario);
        }
    }
}
