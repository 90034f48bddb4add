//! The hook workloads of the performance goals, shared by `emo bench` and the criterion benches so both
//! measure the same thing.
use std::str::FromStr;

use tch::{Kind, Tensor};

use emo_model::{Capture, Edit, Hook, HookPoint, Intervention, Interventions, Positions, Sublayer, TransformerConfig};

use crate::RunError;

/// Which hooks a benchmarked pass carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookLoad {
    /// No hooks (baseline).
    None,
    /// Capture `hook_resid_mid`, `hook_resid_post`, `attn.hook_z` and `mlp.hook_post` of every layer at the
    /// last prompt token (the elicitation workload).
    Capture,
    /// One RMS-scaled residual edit on each of 10 middle layers, at the last prompt token and every generated
    /// token (the steering workload).
    Edit,
}

impl FromStr for HookLoad {
    type Err = RunError;
    fn from_str(s: &str) -> Result<Self, RunError> {
        match s {
            "none" => Ok(HookLoad::None),
            "capture" => Ok(HookLoad::Capture),
            "edit" => Ok(HookLoad::Edit),
            _ => Err(RunError::Invalid(format!("unknown hook load `{s}` (none, capture, edit)"))),
        }
    }
}

/// Builds the hooks for `load` on a model of shape `cfg`; the caller puts them into a `HookSet`.
pub fn hooks_for(load: HookLoad, cfg: &TransformerConfig) -> Option<Box<dyn Hook>> {
    match load {
        HookLoad::None => None,
        HookLoad::Capture => {
            let points =
                (0..cfg.n_layers).flat_map(|l| [HookPoint::ResidMid(l), HookPoint::ResidPost(l), HookPoint::AttnZ(l), HookPoint::MlpPost(l)]);
            Some(Box::new(Capture::new(points, Positions::LastPrompt)))
        }
        HookLoad::Edit => {
            let first = cfg.scale_layer(11, 28);
            let v = Tensor::randn([cfg.d_model as i64], (Kind::Float, tch::Device::Cpu));
            let v = &v / v.norm();
            let edit = (first..(first + 10).min(cfg.n_layers))
                .fold(Intervention::none(), |i, l| i.with(HookPoint::ResidPost(l), Edit::AddRms(v.shallow_clone(), 8.0)));
            Some(Box::new(Interventions::all_rows(edit, Positions::LastPromptAndGenerated)))
        }
    }
}

/// The branching workload: `n` last-token sublayer-output injections, cycling through every sublayer and the
/// paper's four alphas (60 sublayers x 4 alphas = 240 settings on SmolLM2), as the sublayer-importance
/// sweep runs them.
pub fn sublayer_injections(cfg: &TransformerConfig, n: usize) -> Vec<Intervention> {
    let sublayers = Sublayer::all(cfg.n_layers);
    let alphas = [0.1, 0.3, 0.5, 0.7];
    tch::manual_seed(1);
    let v = Tensor::randn([cfg.d_model as i64], (Kind::Float, tch::Device::Cpu));
    let v = &v / v.norm();
    (0..n)
        .map(|i| {
            let s = sublayers[i % sublayers.len()];
            let alpha = alphas[(i / sublayers.len()) % alphas.len()];
            Intervention::none().with(s.output(), Edit::Add(&v * (alpha * 10.0)))
        })
        .collect()
}

/// Peak resident memory of this process in MB (Linux `VmHWM`), or `None` where it cannot be read.
pub fn peak_rss_mb() -> Option<f64> {
    proc_status_mb("VmHWM:")
}

/// Resident memory of this process now, in MB (Linux `VmRSS`), or `None` where it cannot be read.
pub fn current_rss_mb() -> Option<f64> {
    proc_status_mb("VmRSS:")
}

fn proc_status_mb(key: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}
