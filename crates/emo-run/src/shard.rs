//! Sharded stages: one stage's batches split over N processes (`--shard I/N`, batch `b` to shard `b mod N`),
//! each committing its own part files and its own progress file beside them ([`crate::shard_progress`]), so
//! any shard can be killed and rerun alone; then [`crate::merge::merge_stage`] (`emo merge`) combines them
//! into exactly the outputs an unsharded run writes, because both go through the same per-kind merge: replies
//! and tables concatenated in batch order, each batch's sums added in batch order.
//!
//! Shards of one stage may run at the same time on one run folder (a cluster's shared file system): the
//! manifest is only ever changed under the run's lock ([`crate::RunDir::update_manifest`]), and a shard
//! records in it no more than that the stage is sharded in N.
//!
//! ```
//! use emo_run::shard::Shard;
//! let s: Shard = "1/3".parse()?;
//! assert!(s.owns(1) && s.owns(4) && !s.owns(0));
//! assert!("3/3".parse::<Shard>().is_err());
//! # Ok::<(), emo_run::RunError>(())
//! ```
use std::fmt;
use std::str::FromStr;

use crate::error::{Result, RunError};

/// Shard `index` of `count` (0-based): the batches `b` with `b % count == index`. Round robin rather than
/// contiguous ranges, so that prompts sorted by length spread their cost evenly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// Which shard, `0..count`.
    pub index: usize,
    /// How many shards.
    pub count: usize,
}

impl Shard {
    /// Whether batch `b` is this shard's.
    pub fn owns(&self, b: usize) -> bool {
        b % self.count == self.index
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = RunError;

    /// `I/N` with `0 <= I < N`.
    fn from_str(s: &str) -> Result<Shard> {
        let bad = |why: &str| RunError::Invalid(format!("--shard `{s}`: {why} (expected I/N with 0 <= I < N, e.g. 0/4)"));
        let (i, n) = s.split_once('/').ok_or_else(|| bad("no `/`"))?;
        let index: usize = i.trim().parse().map_err(|_| bad("I is not a whole number"))?;
        let count: usize = n.trim().parse().map_err(|_| bad("N is not a whole number"))?;
        if count == 0 || index >= count {
            return Err(bad("I must be below N"));
        }
        Ok(Shard { index, count })
    }
}

/// Collects the stages a shard left for merging, so that a pipeline can go on with the work that does not
/// read them (all emotions of a sweep, several independent stages) and stop only where something would.
///
/// ```
/// use emo_run::{shard::Pending, RunError};
/// let mut pending = Pending::default();
/// let done: Option<u32> = pending.take(Ok(7))?;
/// let left: Option<u32> = pending.take(Err(RunError::ShardPending { shard: "0/2".into(), stages: vec!["elicit".into()] }))?;
/// assert_eq!((done, left), (Some(7), None));
/// assert!(matches!(pending.check(), Err(RunError::ShardPending { .. })));
/// # Ok::<(), RunError>(())
/// ```
#[derive(Debug, Default)]
pub struct Pending {
    shard: String,
    stages: Vec<String>,
}

impl Pending {
    /// `Some(value)` for a result, `None` (remembered) when a shard left stages for merging; other errors
    /// pass through.
    pub fn take<T>(&mut self, result: Result<T>) -> Result<Option<T>> {
        match result {
            Ok(v) => Ok(Some(v)),
            Err(RunError::ShardPending { shard, stages }) => {
                self.shard = shard;
                self.stages.extend(stages);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.stages.is_empty()
    }

    /// `Err(ShardPending)` with every stage collected since the last check, else `Ok`.
    pub fn check(&mut self) -> Result<()> {
        if self.stages.is_empty() {
            return Ok(());
        }
        Err(RunError::ShardPending { shard: std::mem::take(&mut self.shard), stages: std::mem::take(&mut self.stages) })
    }
}
