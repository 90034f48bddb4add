//! Context-agnostic emotion directions (paper section 5, spec section 5): per scenario-event group subtract
//! the mean over the six emotions, average per emotion over groups, remove the mean over emotions, and
//! L2-normalise per layer.
use std::collections::BTreeMap;
use std::str::FromStr;

use emo_data::Emotion;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

pub use emo_steer::{EmotionDirections, Site};

use crate::error::{DirectionsError, Result};

/// Last-prompt-token residuals of a set of prompts with their labels: the input of the direction extraction,
/// the probes and the PCA.
pub struct Activations {
    /// `[n, n_layers, d_model]` at `hook_resid_mid`.
    pub resid_mid: Tensor,
    /// `[n, n_layers, d_model]` at `hook_resid_post`.
    pub resid_post: Tensor,
    /// Target emotion of each prompt.
    pub emotion: Vec<Emotion>,
    /// Scenario-event group of each prompt (the six emotions of one scenario and valence share it).
    pub group: Vec<usize>,
    /// Whether the judge said the reply expresses its emotion (`false` when it failed to decide).
    pub matched: Vec<bool>,
}

impl Activations {
    /// The activations of one site.
    pub fn site(&self, site: Site) -> &Tensor {
        match site {
            Site::ResidMid => &self.resid_mid,
            Site::ResidPost => &self.resid_post,
        }
    }

    /// Number of prompts.
    pub fn len(&self) -> usize {
        self.emotion.len()
    }

    /// Whether there are no prompts.
    pub fn is_empty(&self) -> bool {
        self.emotion.is_empty()
    }

    /// `(n_layers, d_model)`.
    pub fn dims(&self) -> (usize, usize) {
        let s = self.resid_post.size();
        (s[1] as usize, s[2] as usize)
    }

    fn check(&self) -> Result<()> {
        let n = self.len();
        for site in Site::ALL {
            let s = self.site(site).size();
            if s.len() != 3 || s[0] as usize != n || s != self.resid_post.size() {
                return Err(DirectionsError::Invalid(format!(
                    "{site} activations have shape {s:?}; expected [{n}, n_layers, d_model] like resid_post {:?}",
                    self.resid_post.size()
                )));
            }
        }
        if self.group.len() != n || self.matched.len() != n {
            return Err(DirectionsError::Invalid(format!("{n} emotions but {} groups and {} verdicts", self.group.len(), self.matched.len())));
        }
        Ok(())
    }

    /// The groups holding one prompt of every emotion, with the row of each emotion in [`Emotion::ALL`]
    /// order; with `complete_only`, only groups whose six replies all matched (the paper's filter).
    pub fn groups(&self, complete_only: bool) -> Vec<(usize, [usize; 6])> {
        let mut rows: BTreeMap<usize, [Option<usize>; 6]> = BTreeMap::new();
        for (i, (&g, e)) in self.group.iter().zip(&self.emotion).enumerate() {
            rows.entry(g).or_default()[e.index()] = Some(i);
        }
        rows.into_iter()
            .filter_map(|(g, r)| {
                let r: Vec<usize> = r.iter().copied().collect::<Option<Vec<_>>>()?;
                let r: [usize; 6] = r.try_into().ok()?;
                (!complete_only || r.iter().all(|&i| self.matched[i])).then_some((g, r))
            })
            .collect()
    }

    /// Emotion vectors `x_{g,e} - mu_g` of the chosen groups at one site: `[6 * groups, n_layers, d_model]`,
    /// with the emotion index and group of each row.
    pub fn emotion_vectors(&self, site: Site, groups: &[(usize, [usize; 6])]) -> Result<(Tensor, Vec<usize>, Vec<usize>)> {
        self.check()?;
        if groups.is_empty() {
            return Err(DirectionsError::Invalid("no scenario-event group selected".into()));
        }
        let idx: Vec<i64> = groups.iter().flat_map(|(_, r)| r.iter().map(|&i| i as i64)).collect();
        let (l, d) = self.dims();
        let x = self.site(site).index_select(0, &Tensor::from_slice(&idx)).view([groups.len() as i64, 6, l as i64, d as i64]);
        let centred = &x - x.mean_dim(1, true, Kind::Float);
        let labels = (0..groups.len()).flat_map(|_| 0..6).collect();
        let group_ids = groups.iter().flat_map(|(g, _)| [*g; 6]).collect();
        Ok((centred.view([-1, l as i64, d as i64]), labels, group_ids))
    }
}

/// Which scenario-event groups enter the directions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupFilter {
    /// Only groups whose six replies were all judged to match (the paper: 448 of 480).
    Complete,
    /// Every group, whatever the judge said (for models whose replies rarely pass the judge).
    All,
    /// `Complete` when at least a quarter of the groups are complete, else `All`; resolved by
    /// [`Activations::directions`], which records the filter it used.
    Auto,
}

impl FromStr for GroupFilter {
    type Err = DirectionsError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "complete" => Ok(GroupFilter::Complete),
            "all" => Ok(GroupFilter::All),
            "auto" => Ok(GroupFilter::Auto),
            _ => Err(DirectionsError::Invalid(format!("unknown group filter `{s}` (expected complete, all or auto)"))),
        }
    }
}
/// What went into a set of directions, saved beside them as JSON.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DirectionsSummary {
    /// The group filter used (never `Auto`: that is resolved).
    pub filter: GroupFilter,
    /// Groups used.
    pub groups_used: usize,
    /// Groups whose six replies were all judged to match.
    #[serde(default)]
    pub groups_complete: usize,
    /// Groups with all six emotions present.
    pub groups_total: usize,
    /// Number of layers.
    pub n_layers: usize,
    /// Width of the residual stream.
    pub d_model: usize,
    /// Norm of each centroid before normalisation: `[site][emotion][layer]` — how much emotion-specific
    /// variance each layer carries.
    pub centroid_norms: BTreeMap<String, BTreeMap<String, Vec<f64>>>,
}

impl Activations {
    /// Extracts the emotion directions (spec section 5) from these activations.
    pub fn directions(&self, filter: GroupFilter) -> Result<(EmotionDirections, DirectionsSummary)> {
        self.check()?;
        let groups_total = self.groups(false).len();
        let complete = self.groups(true);
        let groups_complete = complete.len();
        let filter = match filter {
            GroupFilter::Auto if groups_complete * 4 < groups_total => GroupFilter::All,
            GroupFilter::Auto => GroupFilter::Complete,
            f => f,
        };
        let groups = if filter == GroupFilter::Complete { complete } else { self.groups(false) };
        if groups.is_empty() {
            return Err(DirectionsError::Invalid(format!(
                "no scenario-event group has all six replies judged a match (0 of {groups_total}); \
                 use all groups instead (`emo directions --all-groups`)"
            )));
        }
        let (l, d) = self.dims();
        let mut out = Vec::new();
        let mut centroid_norms = BTreeMap::new();
        for site in Site::ALL {
            let (v, _, _) = self.emotion_vectors(site, &groups)?;
            let centroids = v.view([groups.len() as i64, 6, l as i64, d as i64]).mean_dim(0, false, Kind::Float);
            // Removing the mean over emotions is a no-op after per-group centring; kept as the paper states it.
            let centroids = &centroids - centroids.mean_dim(0, true, Kind::Float);
            let norms = centroids.norm_scalaropt_dim(2, [-1], true);
            let per_emotion = Emotion::ALL
                .iter()
                .map(|e| Ok((e.name().to_string(), Vec::<f64>::try_from(norms.get(e.index() as i64).flatten(0, -1).to_kind(Kind::Double))?)))
                .collect::<Result<BTreeMap<_, _>>>()?;
            centroid_norms.insert(site.name().to_string(), per_emotion);
            out.push(centroids / norms.clamp_min(1e-12));
        }
        let resid_post = out.pop().expect("two sites");
        let resid_mid = out.pop().expect("two sites");
        let summary = DirectionsSummary { filter, groups_used: groups.len(), groups_complete, groups_total, n_layers: l, d_model: d, centroid_norms };
        Ok((EmotionDirections { resid_mid, resid_post }, summary))
    }
}
