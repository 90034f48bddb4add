//! The resumable batch loop every stage shares, whatever it does per batch (generate and judge, sweep
//! interventions, reduce statistics): work in fixed batches, each batch committed as its own part files (the
//! commit marker written last, atomically), so a run killed at any moment resumes at the first uncommitted
//! batch and recomputes nothing finished. The stage's settings are checked on resume, with a readable diff.
//! The same loop runs one shard of a stage's batches ([`crate::shard`]), whose merge is the stage's own
//! [`StageWork::finish`] logic.
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::bench::peak_rss_mb;
use indicatif::{ProgressBar, ProgressStyle};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{io, Result, RunError};
use crate::folder::{RunDir, StageInfo, StageStats};
use crate::shard::Shard;
use crate::shard_progress::{finished_shards, ShardProgress};

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
///
/// When `run` is [sharded](RunDir::sharded), only the shard's batches run, its progress goes to its own file
/// beside them, and the result is [`RunError::ShardPending`] once they are committed: the stage is complete
/// only when `emo merge` ([`crate::merge::merge_stage`]) has combined every shard. Run whole, a stage that
/// was sharded is merged here when every shard has finished, and refused, naming the shards left, when not.
pub fn run_stage<W: StageWork>(run: &RunDir, name: &str, work: &mut W, progress: bool) -> Result<StageStats> {
    let total_start = Instant::now();
    let sizes = work.batch_sizes();
    let recorded = register(run, name, work)?;
    if recorded.stats.complete {
        return Ok(recorded.stats);
    }
    let parts = run.parts(name);
    fs::create_dir_all(&parts).map_err(io(&parts))?;
    if let Some(shard) = run.shard {
        return run_shard(run, name, work, shard, &sizes, progress);
    }
    if let Some(count) = recorded.shards {
        // Sharded before: every batch must be committed by its shard; merging is then all that is left.
        let (mut stats, _) = finished_shards(&parts, name, count)?;
        work.finish(run, name, &parts, &mut stats)?;
        stats.complete = true;
        save_stats(run, name, work, &stats)?;
        return Ok(stats);
    }
    let mut stats = recorded.stats;
    // Time of earlier sessions of a resumed stage; this session's is added batch by batch.
    let earlier_seconds = stats.seconds;
    let total: usize = sizes.iter().sum();
    let bar = progress_bar(progress, name, total as u64, "prompts");
    let committed: Vec<bool> = (0..sizes.len()).map(|b| work.committed(&parts, b)).collect();
    let mut first = 0;
    for (b, &size) in sizes.iter().enumerate() {
        if committed[b] {
            bar.inc(size as u64);
            first += size;
            continue;
        }
        work.run_batch(&parts, b, first, &mut stats)?;
        first += size;
        bar.inc(size as u64);
        account(&mut stats, earlier_seconds, total_start);
        save_stats(run, name, work, &stats)?;
    }
    bar.finish_and_clear();
    if (0..sizes.len()).all(|b| work.committed(&parts, b)) {
        work.finish(run, name, &parts, &mut stats)?;
        stats.complete = true;
        account(&mut stats, earlier_seconds, total_start);
        save_stats(run, name, work, &stats)?;
    }
    Ok(stats)
}

/// Checks that a recorded stage may be resumed by `work` (and by `run`'s shard), under the run's lock, and
/// returns what is recorded. A shard records a new stage at once, as sharded; a whole run records it with
/// its first batch (so that a stage failing before any batch may be started again with other settings).
fn register<W: StageWork>(run: &RunDir, name: &str, work: &W) -> Result<StageInfo> {
    run.update_manifest(|m| {
        if run.shard.is_none() && !m.stages.contains_key(name) {
            return new_info(name, work, None);
        }
        if !m.stages.contains_key(name) {
            m.stages.insert(name.to_string(), new_info(name, work, run.shard.map(|s| s.count))?);
        }
        let info = m.stages.get_mut(name).expect("recorded above");
        check_resumable(run, name, info, work)?;
        if let (Some(shard), false) = (run.shard, info.stats.complete) {
            match info.shards {
                Some(n) if n != shard.count => {
                    return Err(RunError::Invalid(format!(
                        "{}: stage `{name}` is sharded in {n}, not {}: run it with --shard I/{n}",
                        run.path.display(),
                        shard.count
                    )))
                }
                // Begun whole: its committed batches are the shards' too (a batch's parts do not depend on who
                // ran it), so the stage goes on sharded.
                _ => info.shards = Some(shard.count),
            }
        }
        Ok(info.clone())
    })
}

/// The shard's batches of a stage, its progress in its own file; [`RunError::ShardPending`] when done.
fn run_shard<W: StageWork>(run: &RunDir, name: &str, work: &mut W, shard: Shard, sizes: &[usize], progress: bool) -> Result<StageStats> {
    let total_start = Instant::now();
    let parts = run.parts(name);
    let mut state = ShardProgress::read(&parts, shard)?.unwrap_or_else(|| ShardProgress {
        kind: work.kind().to_string(),
        batch_sizes: sizes.to_vec(),
        stats: StageStats::default(),
        complete: false,
    });
    if state.batch_sizes != sizes || state.kind != work.kind() {
        return Err(RunError::Format {
            path: ShardProgress::path(&parts, shard),
            msg: format!("stage `{name}`: shard {shard} was started with another split of the prompts"),
        });
    }
    let earlier_seconds = state.stats.seconds;
    let mine: Vec<usize> = (0..sizes.len()).filter(|&b| shard.owns(b)).collect();
    let bar = progress_bar(progress, &format!("{name} [{shard}]"), mine.iter().map(|&b| sizes[b] as u64).sum(), "prompts");
    for &b in &mine {
        if !work.committed(&parts, b) {
            let first = sizes[..b].iter().sum();
            work.run_batch(&parts, b, first, &mut state.stats)?;
            account(&mut state.stats, earlier_seconds, total_start);
            state.write(&parts, shard)?;
        }
        bar.inc(sizes[b] as u64);
    }
    bar.finish_and_clear();
    if !state.complete {
        state.complete = true;
        state.write(&parts, shard)?;
    }
    Err(RunError::ShardPending { shard: shard.to_string(), stages: vec![name.to_string()] })
}

/// Brings `stats`' peak memory and time up to now: the time of earlier sessions plus this one's since `start`.
fn account(stats: &mut StageStats, earlier_seconds: f64, start: Instant) {
    stats.peak_rss_mb = stats.peak_rss_mb.max(peak_rss_mb().unwrap_or(0.0));
    stats.seconds = earlier_seconds + start.elapsed().as_secs_f64();
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

/// A stage not yet recorded: `work`'s kind and settings, no progress.
fn new_info<W: StageWork>(name: &str, work: &W, shards: Option<usize>) -> Result<StageInfo> {
    let settings =
        serde_json::to_value(work.settings()).map_err(|e| RunError::Invalid(format!("stage `{name}`: settings cannot be recorded: {e}")))?;
    Ok(StageInfo { kind: work.kind().to_string(), settings, stats: StageStats::default(), shards })
}

/// Records a stage's statistics in the manifest, with the stage itself the first time (under the run's
/// lock: other stages' shards may be writing).
fn save_stats<W: StageWork>(run: &RunDir, name: &str, work: &W, stats: &StageStats) -> Result<()> {
    let info = new_info(name, work, None)?;
    run.update_manifest(|m| {
        m.stages.entry(name.to_string()).or_insert(info).stats = stats.clone();
        Ok(())
    })
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
/// `show` (drawn where [`crate::progress::draw_target`] says). One bar may be shared by several stages or sweeps (see `Sweep::bar`).
pub fn progress_bar(show: bool, message: &str, total: u64, unit: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), crate::progress::draw_target(show));
    let template = format!("{{msg}} [{{elapsed_precise}}] {{bar:30}} {{pos}}/{{len}} {unit}, {{per_sec}}, ETA {{eta}}");
    bar.set_style(ProgressStyle::with_template(&template).expect("valid template"));
    bar.set_message(message.to_string());
    bar
}
