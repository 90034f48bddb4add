//! The resumable batch loop every stage shares, whatever it does per batch (generate and judge, sweep
//! interventions, reduce statistics): work in fixed batches, each batch committed as its own part files (the
//! commit marker written last, atomically), so a run killed at any moment resumes at the first uncommitted
//! batch and recomputes nothing finished. The stage's settings are checked on resume, with a readable diff.
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::bench::peak_rss_mb;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{io, Result, RunError};
use crate::folder::{Manifest, RunDir, StageInfo, StageStats};
use crate::store::write_json;

/// The work of one stage, batch by batch. [`run_stage`] drives it.
pub trait StageWork {
    /// Everything that determines the stage's output; a resumed stage must have equal settings.
    type Settings: Serialize + DeserializeOwned + PartialEq;

    /// The stage kind recorded in the manifest (`generation`, `sweep`, `reduce`, ...).
    fn kind(&self) -> &str;

    /// The settings.
    fn settings(&self) -> &Self::Settings;

    /// Items (prompts) in each batch, in order.
    fn batch_sizes(&self) -> Vec<usize>;

    /// Whether batch `b` is committed in `parts` (the stage's part folder).
    fn committed(&self, parts: &Path, b: usize) -> bool;

    /// Called once, before the first batch this session runs (or before [`StageWork::finish`] when none is
    /// left), with the number of batches already committed (e.g. to reload a running reduction). The
    /// default does nothing.
    fn resume(&mut self, _parts: &Path, _committed: usize) -> Result<()> {
        Ok(())
    }

    /// Runs batch `b` (its items start at `first` in the stage's order) and commits it in `parts`, the
    /// commit marker last. Adds what it did to `stats` (prompts, tokens, model seconds).
    fn run_batch(&mut self, parts: &Path, b: usize, first: usize, stats: &mut StageStats) -> Result<()>;

    /// Called once every batch is committed: merges the parts into the stage's outputs and may correct
    /// `stats` from them (a kill between a commit and the manifest update must not lose a batch).
    /// `name` is the stage's name (for its output files).
    fn finish(&mut self, run: &RunDir, name: &str, parts: &Path, stats: &mut StageStats) -> Result<()>;
}

/// Runs (or resumes) the stage `name` of `run`: every missing batch, then [`StageWork::finish`]. The manifest
/// is updated after each batch. Returns the stage's statistics.
pub fn run_stage<W: StageWork>(run: &RunDir, name: &str, work: &mut W, progress: bool) -> Result<StageStats> {
    let total_start = Instant::now();
    let mut manifest = run.require_manifest()?;
    let mut stats = match manifest.stages.get(name) {
        Some(info) => {
            check_resumable(run, name, info, work)?;
            info.stats.clone()
        }
        None => StageStats::default(),
    };
    // Time of earlier sessions of a resumed stage; this session's is added batch by batch.
    let earlier_seconds = stats.seconds;
    let parts = run.parts(name);
    fs::create_dir_all(&parts).map_err(io(&parts))?;
    let sizes = work.batch_sizes();
    let total: usize = sizes.iter().sum();
    let bar = progress_bar(progress, name, total as u64, "prompts");
    let committed: Vec<bool> = (0..sizes.len()).map(|b| work.committed(&parts, b)).collect();
    let n_committed = committed.iter().filter(|&&c| c).count();
    let mut resumed = false;
    let mut first = 0;
    for (b, &size) in sizes.iter().enumerate() {
        if committed[b] {
            bar.inc(size as u64);
            first += size;
            continue;
        }
        if !resumed {
            work.resume(&parts, n_committed)?;
            resumed = true;
        }
        work.run_batch(&parts, b, first, &mut stats)?;
        first += size;
        bar.inc(size as u64);
        stats.peak_rss_mb = stats.peak_rss_mb.max(peak_rss_mb().unwrap_or(0.0));
        stats.seconds = earlier_seconds + total_start.elapsed().as_secs_f64();
        save_stage(run, &mut manifest, name, work, &stats)?;
    }
    bar.finish_and_clear();
    let all_committed = (0..sizes.len()).all(|b| work.committed(&parts, b));
    if all_committed && !(stats.complete && manifest.stages.contains_key(name)) {
        if !resumed {
            work.resume(&parts, n_committed)?;
        }
        work.finish(run, name, &parts, &mut stats)?;
        stats.complete = true;
        stats.peak_rss_mb = stats.peak_rss_mb.max(peak_rss_mb().unwrap_or(0.0));
        stats.seconds = earlier_seconds + total_start.elapsed().as_secs_f64();
        save_stage(run, &mut manifest, name, work, &stats)?;
    }
    Ok(stats)
}

/// Ok when a recorded stage may be resumed by `work`: same kind, equal settings (compared as the kind's
/// type, so that fields added later with defaults still match).
fn check_resumable<W: StageWork>(run: &RunDir, name: &str, info: &StageInfo, work: &W) -> Result<()> {
    let refuse = |why: String| {
        Err(RunError::Invalid(format!("{}: stage `{name}` was started with other settings ({why}); use a new run folder", run.path.display())))
    };
    if info.kind != work.kind() {
        return refuse(format!("kind: was {}, now {}", info.kind, work.kind()));
    }
    let now = serde_json::to_value(work.settings()).unwrap_or_default();
    match serde_json::from_value::<W::Settings>(info.settings.clone()) {
        Ok(was) if was == *work.settings() => Ok(()),
        Ok(was) => refuse(settings_diff(&serde_json::to_value(&was).unwrap_or_default(), &now)),
        Err(e) => refuse(format!("unreadable by this version: {e}")),
    }
}

fn save_stage<W: StageWork>(run: &RunDir, manifest: &mut Manifest, name: &str, work: &W, stats: &StageStats) -> Result<()> {
    let settings =
        serde_json::to_value(work.settings()).map_err(|e| RunError::Invalid(format!("stage `{name}`: settings cannot be recorded: {e}")))?;
    manifest.stages.insert(name.to_string(), StageInfo { kind: work.kind().to_string(), settings, stats: stats.clone() });
    write_json(&run.manifest(), manifest)
}

/// `key: was A, now B` for every top-level field that differs.
pub fn settings_diff(was: &serde_json::Value, now: &serde_json::Value) -> String {
    let mut diffs = Vec::new();
    if let (Some(oa), Some(ob)) = (was.as_object(), now.as_object()) {
        for (k, va) in oa {
            if ob.get(k) != Some(va) {
                diffs.push(format!("{k}: was {va}, now {}", ob.get(k).cloned().unwrap_or_default()));
            }
        }
        for (k, vb) in ob {
            if !oa.contains_key(k) {
                diffs.push(format!("{k}: was absent, now {vb}"));
            }
        }
    }
    diffs.join("; ")
}

/// The part file of batch `b` with `ext` (`00003.jsonl`).
pub fn part_file(parts: &Path, b: usize, ext: &str) -> PathBuf {
    parts.join(format!("{b:05}.{ext}"))
}

/// One bar of rows over several sweep stages, `(stage name, rows)` each, started at the rows `manifest` says
/// earlier sessions committed to them (its ETA counts from now).
pub fn rows_bar(show: bool, message: &str, manifest: &crate::folder::Manifest, stages: &[(String, usize)]) -> ProgressBar {
    let total: usize = stages.iter().map(|(_, rows)| rows).sum();
    let done: usize = stages.iter().map(|(name, _)| manifest.stages.get(name).map_or(0, |s| s.stats.rows)).sum();
    let bar = progress_bar(show, message, total as u64, "rows");
    bar.set_position(done as u64);
    bar.reset_eta();
    bar
}

/// A bar counting `total` `unit`s (prompts, rows), labelled `message`, with rate and ETA; hidden unless
/// `show`. One bar may be shared by several stages or sweeps (see `Sweep::bar`).
pub fn progress_bar(show: bool, message: &str, total: u64, unit: &str) -> ProgressBar {
    let bar = if show { ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr()) } else { ProgressBar::hidden() };
    let template = format!("{{msg}} [{{elapsed_precise}}] {{bar:30}} {{pos}}/{{len}} {unit}, {{per_sec}}, ETA {{eta}}");
    bar.set_style(ProgressStyle::with_template(&template).expect("valid template"));
    bar.set_message(message.to_string());
    bar
}
