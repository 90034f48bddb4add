//! `emo merge`: a sharded stage's shards combined into the outputs an unsharded run writes, through the
//! stage kind's own merge (the function its last batch calls in one process), and the stage marked complete.
use crate::error::{Result, RunError};
use crate::folder::{RunDir, StageStats, GENERATION};
use crate::forward::{REDUCE, SWEEP};
use crate::shard_progress::finished_shards;

/// Merges the shards of stage `name` (`emo merge RUN --stage NAME`): checks that every shard finished, writes
/// the stage's outputs exactly as an unsharded run does, and marks the stage complete in the manifest.
/// A stage already complete is left as it is. Returns its statistics (summed over the shards).
pub fn merge_stage(run: &RunDir, name: &str) -> Result<StageStats> {
    let manifest = run.require_manifest()?;
    let info = manifest.stages.get(name).ok_or_else(|| {
        RunError::Invalid(format!(
            "{}: no stage `{name}` (has: {})",
            run.path.display(),
            manifest.stages.keys().cloned().collect::<Vec<_>>().join(", ")
        ))
    })?;
    if info.stats.complete {
        return Ok(info.stats.clone());
    }
    let count = info
        .shards
        .ok_or_else(|| RunError::Invalid(format!("stage `{name}` is not sharded: it completes when its command runs again without --shard")))?;
    let parts = run.parts(name);
    let (mut stats, sizes) = finished_shards(&parts, name, count)?;
    match info.kind.as_str() {
        GENERATION => crate::generation::merge_replies(run, name, &parts, sizes.len(), &mut stats)?,
        SWEEP => crate::forward::merge_tables(run, name, &parts, &sizes, None, &mut stats)?,
        REDUCE => crate::forward::merge_sums(run, name, &parts, &sizes, None, &mut stats)?,
        other => {
            return Err(RunError::Invalid(format!(
                "stage `{name}` is of kind `{other}`, which only its own command can merge: run it again without --shard"
            )))
        }
    }
    stats.complete = true;
    let kind = info.kind.clone();
    run.update_manifest(|m| {
        let entry = m.stages.get_mut(name).ok_or_else(|| RunError::Invalid(format!("stage `{name}` left the manifest while merging")))?;
        if entry.kind != kind {
            return Err(RunError::Invalid(format!("stage `{name}` changed kind while merging")));
        }
        entry.stats = stats.clone();
        Ok(())
    })?;
    Ok(stats)
}

/// Every stage of `run` that is sharded and not yet merged, in manifest order.
pub fn unmerged(run: &RunDir) -> Result<Vec<String>> {
    let manifest = run.require_manifest()?;
    Ok(manifest.stages.iter().filter(|(_, i)| i.shards.is_some() && !i.stats.complete).map(|(n, _)| n.clone()).collect())
}
