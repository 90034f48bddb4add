//! Forward-only stages, resumable like every stage (see [`crate::stage`]):
//!
//! - [`SweepStage`]: a [`Sweep`] in batches of prompts, each batch's `[prompts, interventions]` table
//!   committed as its own part, merged at the end into `{stage}.safetensors` (tensor `table`).
//! - [`ReduceStage`]: statistics reduced batch by batch into named [`GroupedSums`]; after each batch the
//!   running sums (f64, counts as i64) are committed, so memory never grows with the number of prompts and a
//!   resumed stage continues from the last committed sums. The final sums go to `{stage}.safetensors`.
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::ops::Range;
use std::path::Path;
use std::time::Instant;

use emo_model::Model;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tch::Tensor;

use crate::error::{Result, RunError};
use crate::folder::{RunDir, StageStats};
use crate::stage::{part_file, StageWork};
use crate::stats::GroupedSums;
use crate::store::{read_tensors, read_tensors_exact, write_tensors, write_tensors_exact};
use crate::sweep::Sweep;

/// The kind of a [`SweepStage`] in the manifest.
pub const SWEEP: &str = "sweep";
/// The kind of a [`ReduceStage`] in the manifest.
pub const REDUCE: &str = "reduce";

fn batches(n: usize, per_batch: usize) -> Vec<usize> {
    let per_batch = per_batch.max(1);
    (0..n).step_by(per_batch).map(|s| per_batch.min(n - s)).collect()
}

/// A sweep run as a resumable stage, `batch_prompts` prompts per committed batch.
pub struct SweepStage<'a, S> {
    /// The stage's identity (what the table depends on: prompts, interventions, metric, model...).
    pub settings: S,
    /// The model.
    pub model: &'a Model,
    /// The sweep over all the stage's prompts.
    pub sweep: Sweep<'a>,
    /// Prompts per committed batch.
    pub batch_prompts: usize,
}

impl<S> SweepStage<'_, S> {
    /// The merged table of a complete sweep stage: `[prompts, interventions]` f32.
    pub fn load(run: &RunDir, name: &str) -> Result<Tensor> {
        let path = run.output(name, "safetensors");
        read_tensors(&path)?.take(&path, "table", None)
    }
}

impl<S: Serialize + DeserializeOwned + PartialEq> StageWork for SweepStage<'_, S> {
    type Settings = S;

    fn kind(&self) -> &str {
        SWEEP
    }

    fn settings(&self) -> &S {
        &self.settings
    }

    fn batch_sizes(&self) -> Vec<usize> {
        batches(self.sweep.prompts.len(), self.batch_prompts)
    }

    fn committed(&self, parts: &Path, b: usize) -> bool {
        part_file(parts, b, "safetensors").exists()
    }

    fn run_batch(&mut self, parts: &Path, b: usize, first: usize, stats: &mut StageStats) -> Result<()> {
        let n = self.batch_sizes()[b];
        let t = Instant::now();
        let table = self.sweep.run_prompts(self.model, first..first + n)?;
        stats.generate_seconds += t.elapsed().as_secs_f64();
        stats.prompts += n;
        stats.rows += n * self.sweep.interventions.len();
        let meta = BTreeMap::from([("first_index".to_string(), first.to_string())]);
        write_tensors(&part_file(parts, b, "safetensors"), &[("table".into(), table)], &meta)
    }

    fn finish(&mut self, run: &RunDir, name: &str, parts: &Path, stats: &mut StageStats) -> Result<()> {
        let sizes = self.batch_sizes();
        let mut tables = Vec::with_capacity(sizes.len());
        for (b, &n) in sizes.iter().enumerate() {
            let path = part_file(parts, b, "safetensors");
            tables.push(read_tensors(&path)?.take(&path, "table", Some(&[n as i64, self.sweep.interventions.len() as i64]))?);
        }
        let table = if tables.is_empty() {
            Tensor::zeros([0, self.sweep.interventions.len() as i64], (tch::Kind::Float, tch::Device::Cpu))
        } else {
            Tensor::cat(&tables, 0)
        };
        stats.prompts = self.sweep.prompts.len();
        stats.rows = stats.prompts * self.sweep.interventions.len();
        write_tensors(&run.output(name, "safetensors"), &[("table".into(), table)], &BTreeMap::new())
    }
}

/// Named running sums, the state of a [`ReduceStage`].
#[derive(Debug, Default)]
pub struct Reduction {
    sums: BTreeMap<String, GroupedSums>,
}

impl Reduction {
    /// A reduction of the given named, empty sums.
    pub fn new(sums: impl IntoIterator<Item = (String, GroupedSums)>) -> Self {
        Reduction { sums: sums.into_iter().collect() }
    }

    /// The sums called `name`.
    pub fn get(&self, name: &str) -> Result<&GroupedSums> {
        self.sums.get(name).ok_or_else(|| self.unknown(name))
    }

    /// The sums called `name`, to add to.
    pub fn get_mut(&mut self, name: &str) -> Result<&mut GroupedSums> {
        if self.sums.contains_key(name) {
            Ok(self.sums.get_mut(name).expect("checked"))
        } else {
            Err(self.unknown(name))
        }
    }

    /// The names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.sums.keys().map(String::as_str)
    }

    fn unknown(&self, name: &str) -> RunError {
        RunError::Invalid(format!("no statistics `{name}` (has: {})", self.names().collect::<Vec<_>>().join(", ")))
    }

    fn tensors(&self) -> Vec<(String, Tensor)> {
        self.sums.iter().flat_map(|(n, s)| s.to_tensors(n)).collect()
    }

    /// Writes the sums exactly (f64 sums, i64 counts), atomically.
    pub fn save(&self, path: &Path, metadata: &BTreeMap<String, String>) -> Result<()> {
        write_tensors_exact(path, &self.tensors(), metadata)
    }

    /// Reads sums written by [`Reduction::save`]: every statistics name found in the file.
    pub fn load(path: &Path) -> Result<Reduction> {
        let file = read_tensors_exact(path)?;
        let mut tensors: HashMap<String, Tensor> = file.tensors.into_iter().collect();
        let names: Vec<String> = tensors.keys().filter_map(|k| k.strip_suffix(".count").map(str::to_string)).collect();
        let mut sums = BTreeMap::new();
        for name in names {
            let s =
                GroupedSums::from_tensors(&name, |k| tensors.remove(k)).map_err(|e| RunError::Format { path: path.into(), msg: e.to_string() })?;
            sums.insert(name, s);
        }
        Ok(Reduction { sums })
    }
}

/// A reduction run as a resumable stage: `reduce(items, &mut reduction, &mut stats)` adds the statistics of
/// the items `items` (indices in the stage's order) for each batch.
pub struct ReduceStage<S, F> {
    /// The stage's identity.
    pub settings: S,
    /// Items in all.
    pub items: usize,
    /// Items per committed batch.
    pub batch_items: usize,
    /// The running sums (empty ones to start).
    pub state: Reduction,
    /// Adds one batch's statistics.
    pub reduce: F,
}

impl<S, F> ReduceStage<S, F> {
    /// The final sums of a complete reduce stage.
    pub fn load(run: &RunDir, name: &str) -> Result<Reduction> {
        Reduction::load(&run.output(name, "safetensors"))
    }

    /// The batch whose running sums are committed last in `parts`, if any.
    fn last_committed(parts: &Path) -> Option<usize> {
        let entries = fs::read_dir(parts).ok()?;
        entries.filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix("state-")?.strip_suffix(".safetensors")?.parse().ok()).max()
    }
}

impl<S, F> StageWork for ReduceStage<S, F>
where
    S: Serialize + DeserializeOwned + PartialEq,
    F: FnMut(Range<usize>, &mut Reduction, &mut StageStats) -> Result<()>,
{
    type Settings = S;

    fn kind(&self) -> &str {
        REDUCE
    }

    fn settings(&self) -> &S {
        &self.settings
    }

    fn batch_sizes(&self) -> Vec<usize> {
        batches(self.items, self.batch_items)
    }

    fn committed(&self, parts: &Path, b: usize) -> bool {
        Self::last_committed(parts).is_some_and(|last| last >= b)
    }

    fn resume(&mut self, parts: &Path, committed: usize) -> Result<()> {
        if committed == 0 {
            return Ok(());
        }
        let path = parts.join(format!("state-{:05}.safetensors", committed - 1));
        let loaded = Reduction::load(&path)?;
        for name in self.state.names().map(str::to_string).collect::<Vec<_>>() {
            let s = loaded.sums.get(&name).ok_or_else(|| RunError::Format { path: path.clone(), msg: format!("no statistics `{name}`") })?;
            let mine = self.state.get_mut(&name)?;
            mine.merge(s).map_err(|e| RunError::Format { path: path.clone(), msg: e.to_string() })?;
        }
        Ok(())
    }

    fn run_batch(&mut self, parts: &Path, b: usize, first: usize, stats: &mut StageStats) -> Result<()> {
        let n = self.batch_sizes()[b];
        let t = Instant::now();
        (self.reduce)(first..first + n, &mut self.state, stats)?;
        stats.generate_seconds += t.elapsed().as_secs_f64();
        stats.prompts += n;
        let meta = BTreeMap::from([("items_done".to_string(), (first + n).to_string())]);
        // The new running sums are the commit; the previous ones are removed only after it.
        self.state.save(&parts.join(format!("state-{b:05}.safetensors")), &meta)?;
        if b > 0 {
            let _ = fs::remove_file(parts.join(format!("state-{:05}.safetensors", b - 1)));
        }
        Ok(())
    }

    fn finish(&mut self, run: &RunDir, name: &str, _parts: &Path, stats: &mut StageStats) -> Result<()> {
        stats.prompts = self.items;
        let meta = BTreeMap::from([("items_done".to_string(), self.items.to_string())]);
        self.state.save(&run.output(name, "safetensors"), &meta)
    }
}
