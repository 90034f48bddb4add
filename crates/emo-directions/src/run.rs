//! Section 5's view of a run folder: the elicitation's activations read back for the directions. The
//! generating stage itself is `emo_run::generation`'s; the run folder types are re-exported from `emo-run`.
pub use emo_run::folder::{DatasetInfo, Manifest, ModelInfo, RunDir, StageInfo, StageStats, ELICIT, FORMAT_VERSION, GENERATION};
use emo_run::generation::StageSettings;
pub use emo_run::records::{read_records, record_key, JudgeRecord, ReplyRecord};
use tch::Tensor;

use crate::directions::Site;
use crate::error::{DirectionsError, Result};
use crate::store::read_tensors;

/// The elicitation's activations and labels, in prompt order, read from the run folder.
pub fn load_activations(run: &RunDir) -> Result<crate::directions::Activations> {
    let manifest = run.require_manifest()?;
    let stage = manifest.stages.get(ELICIT).ok_or_else(|| DirectionsError::Invalid(format!("{}: no elicitation in this run", run.path.display())))?;
    if !stage.stats.complete {
        return Err(DirectionsError::Invalid(format!(
            "{}: the elicitation is not complete ({} prompts done); rerun the same `emo elicit` to finish it",
            run.path.display(),
            stage.stats.prompts
        )));
    }
    if !stage.settings_as::<StageSettings>(ELICIT)?.capture {
        return Err(DirectionsError::Invalid(format!("{}: the elicitation ran without capturing activations", run.path.display())));
    }
    let records = run.read_replies(ELICIT)?;
    let mut mids = Vec::new();
    let mut posts = Vec::new();
    let mut b = 0;
    let mut seen = 0;
    while seen < records.len() {
        let path = run.activations().join(format!("{b:05}.safetensors"));
        let mut f = read_tensors(&path)?;
        let first: usize = f
            .metadata
            .get("first_index")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| DirectionsError::Format { path: path.clone(), msg: "missing first_index metadata".into() })?;
        if first != seen {
            return Err(DirectionsError::Format { path, msg: format!("starts at prompt {first}, expected {seen}") });
        }
        let mid = f.take(&path, Site::ResidMid.name(), None)?;
        let post = f.take(&path, Site::ResidPost.name(), Some(&mid.size()))?;
        seen += mid.size()[0] as usize;
        mids.push(mid);
        posts.push(post);
        b += 1;
    }
    let (l, d) = (manifest.model.n_layers as i64, manifest.model.d_model as i64);
    let resid_mid = Tensor::cat(&mids, 0);
    if resid_mid.size() != [records.len() as i64, l, d] {
        return Err(DirectionsError::Format {
            path: run.activations(),
            msg: format!("activations have shape {:?}, expected [{}, {l}, {d}]", resid_mid.size(), records.len()),
        });
    }
    let emotion = records.iter().map(|r| r.emotion()).collect::<Result<Vec<_>>>()?;
    let group = records.iter().map(|r| Ok(r.scenario * 3 + r.valence()?.index())).collect::<Result<Vec<_>>>()?;
    Ok(crate::directions::Activations {
        resid_mid,
        resid_post: Tensor::cat(&posts, 0),
        emotion,
        group,
        matched: records.iter().map(ReplyRecord::matched).collect(),
    })
}
