//! What each shard of a sharded stage has done: its own progress file beside the stage's parts, which no
//! other process writes, and the check that every shard has finished before anything merges them.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, RunError};
use crate::folder::StageStats;
use crate::shard::Shard;
use crate::store::{read_json, write_json};

/// One shard's progress on a stage, `parts/{stage}/shard-{I}-of-{N}.json`, rewritten after each of its batches.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardProgress {
    /// The stage's kind, as in the manifest.
    pub kind: String,
    /// Prompts in every batch of the stage (all shards'), in order: the merge needs the stage's layout without
    /// the stage's inputs.
    pub batch_sizes: Vec<usize>,
    /// What this shard did (its own batches only).
    pub stats: StageStats,
    /// Whether every batch of this shard is committed.
    pub complete: bool,
}

impl ShardProgress {
    /// Where shard `shard` of a stage keeps its progress, in the stage's part folder.
    pub fn path(parts: &Path, shard: Shard) -> PathBuf {
        parts.join(format!("shard-{}-of-{}.json", shard.index, shard.count))
    }

    /// The progress shard `shard` recorded, if any.
    pub fn read(parts: &Path, shard: Shard) -> Result<Option<ShardProgress>> {
        let path = Self::path(parts, shard);
        if !path.exists() {
            return Ok(None);
        }
        read_json(&path).map(Some)
    }

    /// Writes it (atomically).
    pub fn write(&self, parts: &Path, shard: Shard) -> Result<()> {
        write_json(&Self::path(parts, shard), self)
    }
}

/// The statistics of a stage sharded in `count`, summed over its shards (times and counts added, peak memory
/// the largest), when every shard has finished; otherwise an error naming the stage and the shards missing.
pub fn finished_shards(parts: &Path, name: &str, count: usize) -> Result<(StageStats, Vec<usize>)> {
    let mut stats = StageStats::default();
    let mut missing = Vec::new();
    let mut sizes: Option<Vec<usize>> = None;
    for index in 0..count {
        let shard = Shard { index, count };
        match ShardProgress::read(parts, shard)? {
            Some(p) if p.complete => {
                if sizes.as_ref().is_some_and(|s| *s != p.batch_sizes) {
                    return Err(RunError::Format {
                        path: ShardProgress::path(parts, shard),
                        msg: format!("stage `{name}`: shard {shard} split the prompts differently from the others"),
                    });
                }
                add_stats(&mut stats, &p.stats);
                sizes = Some(p.batch_sizes);
            }
            _ => missing.push(format!("{shard}")),
        }
    }
    if !missing.is_empty() {
        return Err(RunError::Invalid(format!(
            "stage `{name}` is sharded in {count} and shard(s) {} have not finished: run each with --shard I/{count}, then `emo merge`",
            missing.join(", ")
        )));
    }
    Ok((stats, sizes.unwrap_or_default()))
}

fn add_stats(total: &mut StageStats, s: &StageStats) {
    total.prompts += s.prompts;
    total.rows += s.rows;
    total.new_tokens += s.new_tokens;
    total.prompt_tokens += s.prompt_tokens;
    total.generate_seconds += s.generate_seconds;
    total.judge_seconds += s.judge_seconds;
    total.seconds += s.seconds;
    total.peak_rss_mb = total.peak_rss_mb.max(s.peak_rss_mb);
}
