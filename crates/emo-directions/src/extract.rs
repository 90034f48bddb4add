//! From a run's activations to its direction files (directions brought in from other tools are
//! `emo_steer::import`'s).
use std::collections::BTreeMap;

use emo_data::Emotion;
use emo_steer::control_vector::write_control_vector;
use emo_steer::npy::write_npz;

use crate::directions::{Activations, DirectionsSummary, GroupFilter, Site};
use crate::error::Result;
use crate::run::RunDir;
use crate::store::write_json;

/// Computes the run's directions from its activations ([`load_activations`]) and writes `directions.safetensors`, `directions.json`,
/// `control_vectors/{emotion}.gguf` (the `resid_post` directions) and, with `npz`, `directions.npz`.
///
/// [`load_activations`]: crate::run::load_activations
pub fn extract(run: &RunDir, acts: &Activations, filter: GroupFilter, npz: bool) -> Result<DirectionsSummary> {
    let manifest = run.require_manifest()?;
    let (dirs, summary) = acts.directions(filter)?;
    let meta = BTreeMap::from([
        ("model".to_string(), manifest.model.path.clone()),
        ("model_sha256".to_string(), manifest.model.sha256.clone()),
        ("filter".to_string(), format!("{filter:?}").to_lowercase()),
        ("groups_used".to_string(), summary.groups_used.to_string()),
    ]);
    dirs.save(&run.directions(), &meta)?;
    write_json(&run.directions_summary(), &summary)?;
    for e in Emotion::ALL {
        let path = run.control_vectors().join(format!("{}.gguf", e.name()));
        write_control_vector(&path, &dirs.get(Site::ResidPost, e), &manifest.model.architecture, 1.0)?;
    }
    if npz {
        write_npz(run.path.join("directions.npz"), &dirs.named())?;
    }
    Ok(summary)
}
