//! The direction arithmetic of spec section 5 against a plain re-computation, the group filter, and the
//! safetensors files (no model needed).
use std::collections::BTreeMap;

use emo_data::Emotion;
use emo_directions::{Activations, EmotionDirections, GroupFilter, Site};
use tch::{Kind, Tensor};

fn synthetic(groups: usize, l: i64, d: i64, matched: impl Fn(usize, usize) -> bool) -> Activations {
    tch::manual_seed(7);
    let n = groups * 6;
    let mut emotion = Vec::new();
    let mut group = Vec::new();
    let mut ok = Vec::new();
    // Shuffled order: the code must pair rows by label, not by position.
    for i in (0..n).rev() {
        let (g, e) = (i / 6, (i * 5) % 6);
        let g = g * 3 + 1; // group ids need not be dense
        emotion.push(Emotion::ALL[e]);
        group.push(g);
        ok.push(matched(g, e));
    }
    Activations {
        resid_mid: Tensor::randn([n as i64, l, d], (Kind::Float, tch::Device::Cpu)),
        resid_post: Tensor::randn([n as i64, l, d], (Kind::Float, tch::Device::Cpu)) * 3.0 + 1.0,
        emotion,
        group,
        matched: ok,
    }
}

/// Spec section 5 written out with loops over plain vectors.
fn by_hand(a: &Activations, site: Site, keep: impl Fn(usize) -> bool, layer: i64) -> Vec<Vec<f64>> {
    let x = a.site(site);
    let d = x.size()[2] as usize;
    let mut rows: BTreeMap<usize, [Option<Vec<f64>>; 6]> = BTreeMap::new();
    for i in 0..a.len() {
        let v = Vec::<f64>::try_from(x.get(i as i64).get(layer).to_kind(Kind::Double)).unwrap();
        rows.entry(a.group[i]).or_default()[a.emotion[i].index()] = Some(v);
    }
    let mut centroid = vec![vec![0.0; d]; 6];
    let mut used = 0.0;
    for (g, r) in rows {
        if !keep(g) {
            continue;
        }
        used += 1.0;
        let r: Vec<Vec<f64>> = r.into_iter().map(Option::unwrap).collect();
        for k in 0..d {
            let mu: f64 = r.iter().map(|v| v[k]).sum::<f64>() / 6.0;
            for e in 0..6 {
                centroid[e][k] += r[e][k] - mu;
            }
        }
    }
    for c in &mut centroid {
        let norm = c.iter().map(|v| (v / used).powi(2)).sum::<f64>().sqrt();
        for v in c.iter_mut() {
            *v = *v / used / norm;
        }
    }
    centroid
}

fn assert_close(t: &Tensor, want: &[f64]) {
    let got = Vec::<f64>::try_from(t.to_kind(Kind::Double)).unwrap();
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < 1e-5, "{g} vs {w}");
    }
}

#[test]
fn directions_match_the_spec_computed_by_hand() {
    let a = synthetic(5, 3, 8, |_, _| true);
    let (dirs, summary) = a.directions(GroupFilter::Complete).unwrap();
    assert_eq!((summary.groups_used, summary.groups_total, summary.n_layers, summary.d_model), (5, 5, 3, 8));
    for site in Site::ALL {
        for layer in 0..3 {
            let want = by_hand(&a, site, |_| true, layer);
            for e in Emotion::ALL {
                assert_close(&dirs.get(site, e).get(layer), &want[e.index()]);
            }
        }
        // Unit norm per layer.
        let norms = dirs.site(site).norm_scalaropt_dim(2, [-1], false);
        assert!((norms - 1.0).abs().max().double_value(&[]) < 1e-5);
    }
}

#[test]
fn complete_filter_drops_groups_with_a_failed_reply() {
    // Group 4 (the second) has one reply that did not match.
    let a = synthetic(4, 2, 5, |g, e| !(g == 4 && e == 2));
    let (complete, s) = a.directions(GroupFilter::Complete).unwrap();
    assert_eq!((s.groups_used, s.groups_total), (3, 4));
    let want = by_hand(&a, Site::ResidPost, |g| g != 4, 1);
    assert_close(&complete.get(Site::ResidPost, Emotion::Fear).get(1), &want[Emotion::Fear.index()]);
    let (all, s) = a.directions(GroupFilter::All).unwrap();
    assert_eq!(s.groups_used, 4);
    let want = by_hand(&a, Site::ResidPost, |_| true, 1);
    assert_close(&all.get(Site::ResidPost, Emotion::Fear).get(1), &want[Emotion::Fear.index()]);
}

#[test]
fn no_complete_group_is_a_clear_error() {
    let a = synthetic(3, 2, 4, |_, e| e != 0);
    let err = a.directions(GroupFilter::Complete).err().unwrap().to_string();
    assert!(err.contains("0 of 3") && err.contains("--all-groups"), "{err}");
    // A group missing an emotion is not a group at all.
    let mut b = synthetic(2, 2, 4, |_, _| true);
    b.emotion[0] = b.emotion[1];
    let (_, s) = b.directions(GroupFilter::All).unwrap();
    assert_eq!(s.groups_total, 1);
    // Wrong shapes are refused.
    let mut c = synthetic(2, 2, 4, |_, _| true);
    c.resid_mid = Tensor::zeros([12, 2, 5], (Kind::Float, tch::Device::Cpu));
    let err = c.directions(GroupFilter::All).err().unwrap().to_string();
    assert!(err.contains("resid_mid") && err.contains("[12, 2, 5]"), "{err}");
}

#[test]
fn directions_file_round_trips_and_bad_files_name_the_problem() {
    let a = synthetic(3, 4, 6, |_, _| true);
    let (dirs, _) = a.directions(GroupFilter::All).unwrap();
    let dir = std::env::temp_dir().join(format!("emo-dirs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("directions.safetensors");
    dirs.save(&path, &BTreeMap::from([("model".into(), "test".into())])).unwrap();
    let back = EmotionDirections::load(&path).unwrap();
    for site in Site::ALL {
        assert!(back.site(site).equal(dirs.site(site)), "{site}");
    }
    // The tensor names of the issue: `resid_mid.{emotion}` and `resid_post.{emotion}`, [n_layers, d_model].
    let named = Tensor::read_safetensors(&path).unwrap();
    let mut names: Vec<String> = named.iter().map(|(n, _)| n.clone()).collect();
    names.sort();
    assert_eq!(names.len(), 12);
    assert!(names.contains(&"resid_mid.surprise".to_string()) && names.contains(&"resid_post.anger".to_string()));
    assert!(named.iter().all(|(_, t)| t.size() == [4, 6]));

    // A file without one of the tensors.
    let partial: Vec<(String, Tensor)> = named.into_iter().filter(|(n, _)| n != "resid_mid.disgust").collect();
    let bad = dir.join("partial.safetensors");
    Tensor::write_safetensors(&partial, &bad).unwrap();
    let err = EmotionDirections::load(&bad).err().unwrap().to_string();
    assert!(err.contains("partial.safetensors") && err.contains("resid_mid.disgust"), "{err}");
    // A truncated file.
    let bytes = std::fs::read(&path).unwrap();
    let cut = dir.join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = EmotionDirections::load(&cut).err().unwrap().to_string();
    assert!(err.contains("cut.safetensors"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn auto_filter_keeps_the_papers_filter_only_when_a_quarter_of_groups_are_complete() {
    // One of four groups complete: exactly a quarter, so the paper's filter.
    let a = synthetic(4, 2, 4, |g, e| g == 1 || e != 3);
    let (_, s) = a.directions(GroupFilter::Auto).unwrap();
    assert_eq!((s.filter, s.groups_used, s.groups_complete, s.groups_total), (GroupFilter::Complete, 1, 1, 4));
    // None of five complete: every group.
    let b = synthetic(5, 2, 4, |_, e| e != 3);
    let (_, s) = b.directions(GroupFilter::Auto).unwrap();
    assert_eq!((s.filter, s.groups_used, s.groups_complete, s.groups_total), (GroupFilter::All, 5, 0, 5));
    assert_eq!("auto".parse::<GroupFilter>().unwrap(), GroupFilter::Auto);
    assert!("most".parse::<GroupFilter>().unwrap_err().to_string().contains("`most`"));
}
