//! `emo paper` run whole, sharded in 3 by hand, and sharded in 2 on a real (single-node) Slurm cluster: the
//! same files, byte for byte.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use super::emo;

/// Short replies and three prompts per batch: six batches a stage for the shards to split, in little time.
const PAPER: [&str; 10] = ["--limit", "1", "--seeds", "1", "--max-new-tokens", "4", "--quiet", "--batch", "3", "--device"];

fn paper_args<'a>(out: &'a str, device: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["paper", "--out", out];
    args.extend(PAPER);
    args.push(device);
    args.extend(extra);
    args
}

fn spawn_paper(out: &Path, device: &str, extra: &[&str]) -> Child {
    let args = paper_args(out.to_str().unwrap(), device, extra);
    Command::new(env!("CARGO_BIN_EXE_emo")).args(args).stdout(std::process::Stdio::null()).spawn().expect("run emo")
}

fn ok(out: &Output, what: &str) -> String {
    assert!(out.status.success(), "{what}: {}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every file of a run folder, relative, except what records time or process state: the manifest (its
/// timings), the parts and shards' progress, Slurm's logs and the lock.
fn run_files(root: &Path) -> Vec<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            let name = rel.to_string_lossy().into_owned();
            if ["parts", "slurm", "manifest.json", ".manifest.lock"].contains(&name.as_str()) {
                continue;
            }
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.push(rel);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// A file's content with what depends on time or the folder's name taken out: `seconds` of analysis.json,
/// the report's folder name and its Cost section.
fn comparable(run: &Path, rel: &Path) -> Vec<u8> {
    let bytes = std::fs::read(run.join(rel)).unwrap();
    match rel.to_str().unwrap() {
        "analysis.json" => {
            let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            v.as_object_mut().unwrap().remove("seconds").expect("analysis.json has seconds");
            v.to_string().into_bytes()
        }
        "report.md" => {
            let text = String::from_utf8(bytes).unwrap().replace(&format!("Run folder `{}`", run.display()), "Run folder `RUN`");
            let start = text.find("\n## Cost\n").expect("a Cost section");
            let end = start + 1 + text[start + 1..].find("\n## ").expect("a section after Cost");
            format!("{}{}", &text[..start], &text[end..]).into_bytes()
        }
        _ => bytes,
    }
}

fn assert_same_run(whole: &Path, other: &Path, what: &str) {
    let files = run_files(whole);
    assert_eq!(files, run_files(other), "{what}: other files than the whole run's");
    assert!(files.len() > 50, "{what}: only {} files", files.len());
    for f in &files {
        assert!(comparable(whole, f) == comparable(other, f), "{what}: {} differs from the whole run's", f.display());
    }
    let stages = |run: &Path| -> serde_json::Value {
        let m: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("manifest.json")).unwrap()).unwrap();
        let stages = m["stages"].as_object().unwrap();
        stages.iter().map(|(k, v)| (k.clone(), serde_json::json!([v["settings"], v["stats"]["complete"], v["stats"]["prompts"]]))).collect()
    };
    assert_eq!(stages(whole), stages(other), "{what}: the manifest's stages differ");
}

/// Waits for `path` to exist, up to `limit`.
fn wait_for(path: &Path, limit: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        if path.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A single-node Slurm cluster, stopped when dropped.
struct Cluster {
    dir: PathBuf,
    conf: String,
}

impl Cluster {
    fn start(dir: &Path) -> Cluster {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/test-support/slurm-cluster.sh");
        let out = Command::new(&script).arg("start").arg(dir).output().unwrap();
        let text = ok(&out, "starting the test's Slurm cluster (scripts/setup.sh --test installs it)");
        let conf = text.trim().strip_prefix("export SLURM_CONF=").expect("the cluster's SLURM_CONF").to_string();
        Cluster { dir: dir.to_path_buf(), conf }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/test-support/slurm-cluster.sh");
        let _ = Command::new(script).arg("stop").arg(&self.dir).status();
    }
}

#[test]
fn paper_runs_whole_sharded_and_on_slurm_to_the_same_files() {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-shards-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    let whole = tmp.join("whole");
    let w = whole.to_str().unwrap();

    // Whole, in one process.
    let text = ok(&emo(&paper_args(w, "cpu", &[])), "the whole run");
    assert!(text.contains("paper (sections 5-7) done") && text.contains("sublayer importance:"), "{text}");
    let report = std::fs::read_to_string(whole.join("report.md")).unwrap();
    for part in ["## Section 6", "## Section 7", "Table 2: circuit modulation", "Fig. 1 view", "ours: circuit modulation, test"] {
        assert!(report.contains(part), "{part} missing from the report");
    }
    // Once more: every stage is complete, so no file and not the manifest changes.
    let files: Vec<(PathBuf, Vec<u8>)> = run_files(&whole).into_iter().map(|f| (f.clone(), comparable(&whole, &f))).collect();
    let manifest = std::fs::read(whole.join("manifest.json")).unwrap();
    ok(&emo(&paper_args(w, "cpu", &[])), "the whole run resumed");
    for (f, before) in &files {
        assert!(&comparable(&whole, f) == before, "{} changed on the second run", f.display());
    }
    assert_eq!(std::fs::read(whole.join("manifest.json")).unwrap(), manifest, "the manifest changed");

    // The by-hand shards and the Slurm run are independent: they run side by side, so that the Slurm run's
    // waiting (scheduling, polling) overlaps the shards' work.
    std::thread::scope(|scope| {
        let on_slurm = scope.spawn(|| sharded_on_slurm(&tmp, &whole));
        sharded_by_hand(&tmp, &whole);
        if let Err(panic) = on_slurm.join() {
            std::panic::resume_unwind(panic);
        }
    });
    let _ = std::fs::remove_dir_all(&tmp);
}

/// Sharded in 3 by hand, wave by wave, to the same files as `whole`.
fn sharded_by_hand(tmp: &Path, whole: &Path) {
    // Sharded in 3 by hand, wave by wave: shard 1 with its layers over two devices, shard 2 killed in the
    // middle of the first wave and run again.
    let sharded = tmp.join("sharded");
    let s = sharded.to_str().unwrap();
    let mut wave = 0;
    loop {
        wave += 1;
        assert!(wave <= 6, "the sharded paper did not end in 5 waves");
        let mut shards: Vec<Child> = (0..3)
            .map(|i| {
                let device = if i == 1 { "cpu,cpu" } else { "cpu" };
                spawn_paper(&sharded, device, &["--shard", &format!("{i}/3")])
            })
            .collect();
        if wave == 1 {
            // Shard 2 owns batches 2 and 5 of the elicitation's 6: kill it once its first is committed.
            let first = sharded.join("parts/elicit/00002.jsonl");
            assert!(wait_for(&first, Duration::from_secs(300)), "shard 2 never committed a batch");
            shards[2].kill().unwrap();
            shards[2].wait().unwrap();
            for c in &mut shards[..2] {
                assert!(c.wait().unwrap().success(), "a shard failed");
            }
            let e = String::from_utf8(emo(&["merge", s]).stderr).unwrap();
            assert!(e.contains("elicit") && e.contains("2/3") && !e.contains("0/3"), "merge with a shard missing: {e}");
            let e = String::from_utf8(emo(&paper_args(s, "cpu", &[])).stderr).unwrap();
            assert!(e.contains("sharded in 3") && e.contains("2/3"), "the whole run on an unmerged stage: {e}");
            let e = String::from_utf8(emo(&paper_args(s, "cpu", &["--shard", "0/2"])).stderr).unwrap();
            assert!(e.contains("sharded in 3, not 2"), "another shard count: {e}");
            let committed = std::fs::metadata(&first).unwrap().modified().unwrap();
            shards[2] = spawn_paper(&sharded, "cpu", &["--shard", "2/3"]);
            assert!(shards[2].wait().unwrap().success(), "shard 2 run again failed");
            assert_eq!(std::fs::metadata(&first).unwrap().modified().unwrap(), committed, "the rerun redid a committed batch");
        }
        for c in &mut shards {
            assert!(c.wait().unwrap().success(), "a shard of wave {wave} failed");
        }
        let merged: serde_json::Value = serde_json::from_str(&ok(&emo(&["merge", s, "--json"]), "merge")).unwrap();
        assert_eq!(merged["left"], serde_json::json!([]), "wave {wave}");
        if merged["merged"].as_array().unwrap().is_empty() {
            break;
        }
    }
    assert_eq!(wave, 5, "four waves of stages, then one with nothing left");
    ok(&emo(&paper_args(s, "cpu", &[])), "the report after the shards");
    assert_same_run(whole, &sharded, "sharded in 3");
}

/// The paper on Slurm in 2 shards through `scripts/slurm/emo-paper.sh`, to the same files as `whole`.
fn sharded_on_slurm(tmp: &Path, whole: &Path) {
    // On Slurm, 2 shards per wave, through the script users call; one task of wave 1 fails once, and the
    // same command then continues where it stopped (the other task's batches are kept).
    let cluster = Cluster::start(&tmp.join("slurm-cluster"));
    let on_slurm = tmp.join("slurm");
    let flaky = tmp.join("emo-flaky.sh");
    let fail_once = tmp.join("fail-once");
    std::fs::write(
        &flaky,
        format!(
            "#!/usr/bin/env bash\n# Fails shard 1's first task, once.\n\
             if [ -f {fail} ] && [[ \" $* \" == *\" 1/2 \"* ]]; then\n  \
             rm -f {fail}; echo 'injected failure' >&2; exit 3\nfi\nexec {emo} \"$@\"\n",
            fail = fail_once.display(),
            emo = env!("CARGO_BIN_EXE_emo")
        ),
    )
    .unwrap();
    std::fs::set_permissions(&flaky, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(&fail_once, "").unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/slurm/emo-paper.sh");
    let slurm_paper = || {
        let mut args = vec!["--shards", "2", "--"];
        args.extend(paper_args(on_slurm.to_str().unwrap(), "cpu", &[])[1..].iter());
        Command::new(&script).args(args).env("SLURM_CONF", &cluster.conf).env("EMO", &flaky).current_dir(tmp).output().unwrap()
    };
    let out = slurm_paper();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the injected failure went unnoticed: {err}");
    assert!(err.contains("wave 1") && err.contains("task 1") && err.contains("wave1-1.log") && err.contains("injected failure"), "{err}");
    assert!(!fail_once.exists());
    let text = ok(&slurm_paper(), "the Slurm run continued");
    assert!(text.contains("wave 1 (elicitation), 2 shards: COMPLETED") && text.contains("report: COMPLETED"), "{text}");
    drop(cluster);
    assert_same_run(whole, &on_slurm, "on Slurm in 2 shards");
}
