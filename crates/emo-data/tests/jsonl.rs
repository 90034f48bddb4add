//! The paper's JSONL schema: the upstream files load exactly, and malformed input is an error naming the
//! file, line and field.
mod common;
use std::path::{Path, PathBuf};

use emo_data::sev::{load_jsonl, parse_jsonl, to_jsonl};
use emo_data::{DataError, Dataset, Split};

fn upstream() -> Option<PathBuf> {
    common::upstream("sev.jsonl")
}

#[test]
fn the_papers_files_load_exactly() {
    let Some(dir) = upstream() else { return };
    let ds = Dataset::load_dir(&dir).unwrap();
    for (split, file) in [(Split::Sev, "sev.jsonl"), (Split::Test, "test_set.jsonl")] {
        let scenarios = ds.split(split);
        assert_eq!(scenarios.len(), 160, "{file}");
        let themes: std::collections::BTreeSet<&str> = scenarios.iter().map(|s| s.theme.as_str()).collect();
        assert_eq!(themes.len(), 8, "{themes:?}");
        // Every field of every line survives a round trip through our types.
        let original = std::fs::read_to_string(dir.join(file)).unwrap();
        let ours = to_jsonl(scenarios);
        for (a, b) in original.lines().filter(|l| !l.trim().is_empty()).zip(ours.lines()) {
            let a: serde_json::Value = serde_json::from_str(a).unwrap();
            let b: serde_json::Value = serde_json::from_str(b).unwrap();
            assert_eq!(a, b);
        }
    }
    assert!(ds.test[0].skeleton_id.contains("_test_"), "{}", ds.test[0].skeleton_id);
}

fn parse_err(text: &str) -> String {
    match parse_jsonl(Path::new("bad.jsonl"), text) {
        Err(e @ DataError::Record { .. }) => e.to_string(),
        Err(e) => panic!("wrong error kind: {e}"),
        Ok(v) => panic!("parsed {} records from malformed input", v.len()),
    }
}

const GOOD: &str = r#"{"theme": "Work/Job", "scenario": "I filed the report", "event": {"positive": "p.", "neutral": "n.", "negative": "x."}, "skeleton_id": "work_00"}"#;

#[test]
fn malformed_lines_name_file_line_and_field() {
    assert_eq!(parse_jsonl(Path::new("ok.jsonl"), &format!("{GOOD}\n\n")).unwrap().len(), 1);

    let e = parse_err(&format!("{GOOD}\n{{\"theme\": \"Work/Job\", "));
    assert!(e.starts_with("bad.jsonl:2: json:"), "{e}");

    let missing_valence = GOOD.replace(r#""neutral": "n.", "#, "");
    let e = parse_err(&missing_valence);
    assert!(e.starts_with("bad.jsonl:1: event.neutral: is missing"), "{e}");

    let e = parse_err(&format!("{GOOD}\n{GOOD}"));
    assert!(e.starts_with("bad.jsonl:2: skeleton_id: duplicate id `work_00`"), "{e}");

    let empty = GOOD.replace("I filed the report", "  ");
    let e = parse_err(&empty);
    assert!(e.starts_with("bad.jsonl:1: scenario: is empty"), "{e}");

    let wrong_type = GOOD.replace(r#""x.""#, "3");
    let e = parse_err(&wrong_type);
    assert!(e.starts_with("bad.jsonl:1: event.negative: must be a string"), "{e}");

    let no_events = GOOD.replace(r#""event": {"positive": "p.", "neutral": "n.", "negative": "x."}"#, r#""event": "p""#);
    let e = parse_err(&no_events);
    assert!(e.starts_with("bad.jsonl:1: event: must be an object"), "{e}");
}

#[test]
fn a_missing_file_is_an_error_naming_it() {
    let e = load_jsonl(Path::new("/nonexistent/sev.jsonl")).unwrap_err().to_string();
    assert!(e.contains("/nonexistent/sev.jsonl"), "{e}");
    assert!("train".parse::<Split>().unwrap_err().to_string().contains("`train`"));
}
