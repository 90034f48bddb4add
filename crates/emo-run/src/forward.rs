//! Forward-only stages, resumable like every stage (see [`crate::stage`]):
//!
//! - [`SweepStage`]: a [`Sweep`] in batches of prompts, each batch's `[prompts, interventions]` table
//!   committed as its own part, merged at the end into `{stage}.safetensors` (tensor `table`).
//! - [`ReduceStage`]: statistics reduced batch by batch into named [`GroupedSums`]; after each batch the
//!   running sums (f64, counts as i64) are committed, so memory never grows with the number of prompts and a
//!   resumed stage continues from the last committed sums. The final sums go to `{stage}.safetensors`.
use std::collections::{BTreeMap, HashMap};
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
        merge_tables(run, name, parts, &self.batch_sizes(), Some(self.sweep.interventions.len()), stats)
    }
}

/// A sweep stage's merge (whole or sharded, see [`crate::shard`]): the batches' `[prompts, interventions]`
/// tables of `parts` in batch order into `{stage}.safetensors`. `columns` is the number of interventions when
/// known (else the first part's).
pub fn merge_tables(run: &RunDir, name: &str, parts: &Path, sizes: &[usize], columns: Option<usize>, stats: &mut StageStats) -> Result<()> {
    let mut tables: Vec<Tensor> = Vec::with_capacity(sizes.len());
    let mut columns = columns.map(|c| c as i64);
    for (b, &n) in sizes.iter().enumerate() {
        let path = part_file(parts, b, "safetensors");
        let mut file = read_tensors(&path)?;
        let c = match columns {
            Some(c) => c,
            None => file.tensors.iter().find(|(k, _)| k.as_str() == "table").map_or(0, |(_, t)| t.size().get(1).copied().unwrap_or(0)),
        };
        columns = Some(c);
        tables.push(file.take(&path, "table", Some(&[n as i64, c]))?);
    }
    let columns = columns.unwrap_or(0);
    let table = if tables.is_empty() { Tensor::zeros([0, columns], (tch::Kind::Float, tch::Device::Cpu)) } else { Tensor::cat(&tables, 0) };
    stats.prompts = sizes.iter().sum();
    stats.rows = stats.prompts * columns as usize;
    write_tensors(&run.output(name, "safetensors"), &[("table".into(), table)], &BTreeMap::new())
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

    /// Empty sums of the same names, key counts and shapes.
    pub fn empty_like(&self) -> Reduction {
        Reduction { sums: self.sums.iter().map(|(n, s)| (n.clone(), s.empty_like())).collect() }
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
/// the items `items` (indices in the stage's order) to the empty sums it is given, batch by batch. Each
/// batch's own sums are its committed part (`sums-{b:05}.safetensors`), added up in batch order at the end:
/// the same additions in the same order whether the batches ran in one process or in shards, so a sharded
/// reduction merges to the same bits.
pub struct ReduceStage<S, F> {
    /// The stage's identity.
    pub settings: S,
    /// Items in all.
    pub items: usize,
    /// Items per committed batch.
    pub batch_items: usize,
    /// Empty sums: names, keys and shapes of the statistics (each batch starts from a copy).
    pub state: Reduction,
    /// Adds one batch's statistics.
    pub reduce: F,
}

impl<S, F> ReduceStage<S, F> {
    /// The final sums of a complete reduce stage.
    pub fn load(run: &RunDir, name: &str) -> Result<Reduction> {
        Reduction::load(&run.output(name, "safetensors"))
    }
}

/// Batch `b`'s sums in a reduce stage's part folder.
fn sums_part(parts: &Path, b: usize) -> std::path::PathBuf {
    parts.join(format!("sums-{b:05}.safetensors"))
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
        sums_part(parts, b).exists()
    }

    fn run_batch(&mut self, parts: &Path, b: usize, first: usize, stats: &mut StageStats) -> Result<()> {
        let n = self.batch_sizes()[b];
        let t = Instant::now();
        let mut sums = self.state.empty_like();
        (self.reduce)(first..first + n, &mut sums, stats)?;
        stats.generate_seconds += t.elapsed().as_secs_f64();
        stats.prompts += n;
        let meta = BTreeMap::from([("first_index".to_string(), first.to_string()), ("items".to_string(), n.to_string())]);
        sums.save(&sums_part(parts, b), &meta)
    }

    fn finish(&mut self, run: &RunDir, name: &str, parts: &Path, stats: &mut StageStats) -> Result<()> {
        merge_sums(run, name, parts, &self.batch_sizes(), Some(&self.state), stats)
    }
}

/// A reduce stage's merge (whole or sharded, see [`crate::shard`]): the batches' sums of `parts` added in
/// batch order into `{stage}.safetensors`. `names` (when known) are the statistics every batch must hold.
pub fn merge_sums(run: &RunDir, name: &str, parts: &Path, sizes: &[usize], names: Option<&Reduction>, stats: &mut StageStats) -> Result<()> {
    let mut total: Option<Reduction> = None;
    for b in 0..sizes.len() {
        let path = sums_part(parts, b);
        let batch = Reduction::load(&path)?;
        if let Some(want) = names {
            if let Some(missing) = want.names().find(|n| !batch.sums.contains_key(*n)) {
                return Err(RunError::Format { path, msg: format!("no statistics `{missing}`") });
            }
        }
        match &mut total {
            None => total = Some(batch),
            Some(t) => {
                for (n, s) in &batch.sums {
                    let mine = t.get_mut(n).map_err(|e| RunError::Format { path: path.clone(), msg: e.to_string() })?;
                    mine.merge(s).map_err(|e| RunError::Format { path: path.clone(), msg: e.to_string() })?;
                }
            }
        }
    }
    let total = total.or_else(|| names.map(Reduction::empty_like)).unwrap_or_default();
    let items: usize = sizes.iter().sum();
    stats.prompts = items;
    let meta = BTreeMap::from([("items_done".to_string(), items.to_string())]);
    total.save(&run.output(name, "safetensors"), &meta)
}
