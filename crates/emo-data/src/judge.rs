//! Judges decide whether a text expresses a target emotion, behind one batchable trait, and are measured
//! against reference labels (the paper's GPT-4o-mini verdicts) with accuracy, precision, recall and kappa.
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::Value;

use crate::{DataError, Emotion};

/// A judge's decision on one (target emotion, text).
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    /// Whether the text's style matches the target emotion; `None` when the judge failed on it, which is
    /// counted apart instead of silently as "no match".
    pub matched: Option<bool>,
    /// The judge's confidence that it matches, in 0..=1 where it has one.
    pub score: f64,
    /// Why there is no decision.
    pub failure: Option<Failure>,
}

impl Verdict {
    /// A decision with a score.
    pub fn decided(matched: bool, score: f64) -> Self {
        Verdict { matched: Some(matched), score, failure: None }
    }

    /// No decision.
    pub fn failed(failure: Failure) -> Self {
        Verdict { matched: None, score: 0.0, failure: Some(failure) }
    }
}

/// Why a judge could not decide.
#[derive(Clone, Debug, PartialEq)]
pub enum Failure {
    /// The service failed (network, HTTP status, after retries).
    Api(String),
    /// The service answered, but not with a readable decision.
    Parse(String),
}

/// Anything that can judge texts against target emotions, in batches.
pub trait Judge {
    /// A short name for reports.
    fn name(&self) -> String;
    /// One verdict per (target, text), in order.
    fn judge(&mut self, items: &[(Emotion, &str)]) -> Result<Vec<Verdict>, DataError>;
}

/// One reference label: a text, its target emotion and whether the reference judge said it matches.
#[derive(Clone, Debug, PartialEq)]
pub struct Labeled {
    /// Target emotion.
    pub emotion: Emotion,
    /// The text judged.
    pub text: String,
    /// The reference verdict.
    pub matched: bool,
}

/// Reads labels in the schema of the paper's `steering_labeled.jsonl`: `emotion`, `gen_text`,
/// `judge.match` (0/1) per line.
pub fn load_labels(path: &Path) -> Result<Vec<Labeled>, DataError> {
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Io { path: path.to_path_buf(), source })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let err = |field: &str, msg: String| DataError::Record { path: PathBuf::from(path), line: i + 1, field: field.into(), msg };
        let v: Value = serde_json::from_str(line).map_err(|e| err("json", format!("not valid JSON: {e}")))?;
        let emotion: Emotion = v
            .get("emotion")
            .and_then(Value::as_str)
            .ok_or_else(|| err("emotion", "missing or not a string".into()))?
            .parse()
            .map_err(|e: DataError| err("emotion", e.to_string()))?;
        let text = v.get("gen_text").and_then(Value::as_str).ok_or_else(|| err("gen_text", "missing or not a string".into()))?;
        let matched = match v.get("judge").and_then(|j| j.get("match")).and_then(Value::as_i64) {
            Some(1) => true,
            Some(0) => false,
            other => return Err(err("judge.match", format!("must be 0 or 1, got {other:?}"))),
        };
        out.push(Labeled { emotion, text: text.to_string(), matched });
    }
    Ok(out)
}

/// Agreement of a judge with reference labels.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Agreement {
    /// Items judged.
    pub n: usize,
    /// Items the judge failed on (counted apart, not as "no match").
    pub failures: usize,
    /// Of those, service failures (network, HTTP status).
    pub api_failures: usize,
    /// Of those, answers without a readable decision.
    pub parse_failures: usize,
    /// Fraction of agreeing verdicts among the judged items.
    pub accuracy: f64,
    /// Of the judge's "match", the fraction the reference also says match.
    pub precision: f64,
    /// Of the reference's "match", the fraction the judge finds.
    pub recall: f64,
    /// Cohen's kappa between the judge and the reference.
    pub kappa: f64,
    /// Texts judged per second.
    pub texts_per_s: f64,
}

impl Agreement {
    /// Compares verdicts with reference labels.
    pub fn compute(verdicts: &[Verdict], truth: &[bool], seconds: f64) -> Agreement {
        let (mut tp, mut fp, mut tn, mut fn_, mut failures) = (0f64, 0f64, 0f64, 0f64, 0usize);
        let count = |kind: fn(&Failure) -> bool| verdicts.iter().filter(|v| v.failure.as_ref().is_some_and(kind)).count();
        let api_failures = count(|f| matches!(f, Failure::Api(_)));
        let parse_failures = count(|f| matches!(f, Failure::Parse(_)));
        for (v, &t) in verdicts.iter().zip(truth) {
            match (&v.matched, t) {
                (None, _) => failures += 1,
                (Some(true), true) => tp += 1.0,
                (Some(true), false) => fp += 1.0,
                (Some(false), false) => tn += 1.0,
                (Some(false), true) => fn_ += 1.0,
            }
        }
        let n = tp + fp + tn + fn_;
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        let po = ratio(tp + tn, n);
        let pe = ratio((tp + fp) * (tp + fn_) + (tn + fn_) * (tn + fp), n * n);
        Agreement {
            n: verdicts.len(),
            failures,
            api_failures,
            parse_failures,
            accuracy: po,
            precision: ratio(tp, tp + fp),
            recall: ratio(tp, tp + fn_),
            kappa: if pe < 1.0 { (po - pe) / (1.0 - pe) } else { 0.0 },
            texts_per_s: ratio(verdicts.len() as f64, seconds),
        }
    }
}

/// The two views of a judge evaluation.
#[derive(Clone, Debug, serde::Serialize)]
pub struct JudgeReport {
    /// The judge.
    pub judge: String,
    /// Against the reference labels as they are.
    pub labeled: Agreement,
    /// Cross-emotion view: every reply the reference accepted, judged against its own target (expected match)
    /// and against the next emotion in the paper's order (expected no match).
    pub cross: Agreement,
    /// The labeled view's verdicts, one per label in order (to inspect disagreements).
    #[serde(skip)]
    pub verdicts: Vec<Verdict>,
}

/// Runs `judge` over `labels` in batches of `batch` and measures both views.
pub fn evaluate(judge: &mut dyn Judge, labels: &[Labeled], batch: usize) -> Result<JudgeReport, DataError> {
    let run = |judge: &mut dyn Judge, items: &[(Emotion, &str)]| -> Result<(Vec<Verdict>, f64), DataError> {
        let start = Instant::now();
        let mut out = Vec::with_capacity(items.len());
        for chunk in items.chunks(batch.max(1)) {
            out.extend(judge.judge(chunk)?);
        }
        Ok((out, start.elapsed().as_secs_f64()))
    };
    let items: Vec<(Emotion, &str)> = labels.iter().map(|l| (l.emotion, l.text.as_str())).collect();
    let truth: Vec<bool> = labels.iter().map(|l| l.matched).collect();
    let (pred, secs) = run(judge, &items)?;
    let labeled = Agreement::compute(&pred, &truth, secs);

    let accepted: Vec<&Labeled> = labels.iter().filter(|l| l.matched).collect();
    let mut cross_items = Vec::with_capacity(accepted.len() * 2);
    let mut cross_truth = Vec::with_capacity(accepted.len() * 2);
    for l in accepted {
        let other = Emotion::ALL[(l.emotion.index() + 1) % Emotion::ALL.len()];
        cross_items.push((l.emotion, l.text.as_str()));
        cross_truth.push(true);
        cross_items.push((other, l.text.as_str()));
        cross_truth.push(false);
    }
    let (cross_pred, cross_secs) = run(judge, &cross_items)?;
    let cross = Agreement::compute(&cross_pred, &cross_truth, cross_secs);
    Ok(JudgeReport { judge: judge.name(), labeled, cross, verdicts: pred })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kappa_and_friends_on_a_hand_counted_table() {
        // tp 40, fp 10, fn 5, tn 45; one failure.
        let yes = Verdict::decided(true, 1.0);
        let no = Verdict::decided(false, 0.0);
        let mut pred = vec![yes.clone(); 40];
        let mut truth = vec![true; 40];
        pred.extend(vec![yes; 10]);
        truth.extend(vec![false; 10]);
        pred.extend(vec![no.clone(); 5]);
        truth.extend(vec![true; 5]);
        pred.extend(vec![no; 45]);
        truth.extend(vec![false; 45]);
        pred.push(Verdict::failed(Failure::Parse("prose".into())));
        truth.push(true);
        let a = Agreement::compute(&pred, &truth, 2.0);
        assert_eq!((a.n, a.failures, a.api_failures, a.parse_failures), (101, 1, 0, 1));
        assert!((a.accuracy - 0.85).abs() < 1e-12);
        assert!((a.precision - 0.8).abs() < 1e-12);
        assert!((a.recall - 40.0 / 45.0).abs() < 1e-12);
        // pe = (50*45 + 50*55) / 100^2 = 0.5, kappa = (0.85 - 0.5) / 0.5
        assert!((a.kappa - 0.7).abs() < 1e-12);
        assert!((a.texts_per_s - 50.5).abs() < 1e-12);
    }
}
