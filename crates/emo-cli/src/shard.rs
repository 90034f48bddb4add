//! Runs split over processes or cluster nodes: `--shard I/N` on every command that runs stages, `emo merge`,
//! and the waves of a sharded pipeline (the stages a shard may run before anything reads them).
use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;
use emo_run::merge::{merge_stage, unmerged};
use emo_run::{Pending, RunDir, RunError, Shard};

use crate::emit;

/// `--shard I/N`, for every command that runs stages.
#[derive(Args, Clone, Debug, Default)]
pub(crate) struct ShardArgs {
    /// Run only shard I of N (0-based) of every stage: its batches b with b mod N = I. The command stops, with
    /// success, where the shards' results are needed; `emo merge RUN` combines them once all N have run, and
    /// the same command then goes on (docs/scaling.md).
    #[arg(long, value_name = "I/N")]
    pub(crate) shard: Option<Shard>,
}

impl ShardArgs {
    /// The run folder at `path`, its stages run as this shard.
    pub(crate) fn run(&self, path: &Path) -> RunDir {
        RunDir::new(path).sharded(self.shard)
    }
}

/// `emo merge`.
#[derive(Args, Clone, Debug)]
pub(crate) struct MergeArgs {
    /// The run folder.
    pub(crate) run: PathBuf,
    /// Merge only these stages (default: every sharded stage not yet merged).
    #[arg(long, value_delimiter = ',')]
    pub(crate) stage: Vec<String>,
    /// One JSON line: {"merged": [...], "left": [...]}.
    #[arg(long)]
    pub(crate) json: bool,
}

pub(crate) fn merge_cmd(a: &MergeArgs) -> Result<()> {
    let run = RunDir::new(&a.run);
    let stages = if a.stage.is_empty() { unmerged(&run)? } else { a.stage.clone() };
    let mut lines = Vec::new();
    for name in &stages {
        let stats = merge_stage(&run, name)?;
        lines.push(format!("{name}: {} prompts, {:.1} s of work over its shards\n", stats.prompts, stats.seconds));
    }
    let left = unmerged(&run)?;
    if a.json {
        return emit(format!("{}\n", serde_json::json!({ "merged": stages, "left": left })));
    }
    if stages.is_empty() {
        lines.push(format!("{}: nothing to merge\n", run.path.display()));
    }
    emit(lines.concat())
}

/// The stages a shard leaves for `emo merge`, collected from results of any error type, so that a pipeline
/// runs every stage that reads nothing unmerged before it stops (a wave).
#[derive(Debug, Default)]
pub(crate) struct Waves {
    pending: Pending,
}

impl Waves {
    /// `Some(value)`, or `None` when the result is a shard's [`RunError::ShardPending`] (remembered).
    pub(crate) fn take<T>(&mut self, result: Result<T>) -> Result<Option<T>> {
        match result {
            Ok(v) => Ok(Some(v)),
            Err(e) if stopped_for_merge(&e) => Ok(self.pending.take(Err(e.downcast::<RunError>().expect("checked")))?),
            Err(e) => Err(e),
        }
    }

    /// Ends the wave: [`RunError::ShardPending`] when a stage waits for its other shards.
    pub(crate) fn check(&mut self) -> Result<()> {
        Ok(self.pending.check()?)
    }
}

/// Whether `e` is a shard stopping where other shards' results are needed: not a failure.
pub(crate) fn stopped_for_merge(e: &anyhow::Error) -> bool {
    matches!(e.downcast_ref::<RunError>(), Some(RunError::ShardPending { .. }))
}
