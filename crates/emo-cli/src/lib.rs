//! `emo`: chat with a model, benchmark hooked passes, and run the paper's pipeline, from the shell. The
//! binary is [`main`]; [`run_command`] runs one command line in process (what the Python package's pipelines
//! call).
use std::time::Instant;

use anyhow::{Context, Result};
use args::ModelArgs;
use clap::{Parser, Subcommand};
use emo_model::device::{device_name, kind_name};
use emo_model::{Capture, ChatMessage, DecodeState, GenerationConfig, HookPoint, HookSet, Interventions, LogitsFor, Positions};
use emo_run::bench::{hooks_for, peak_rss_mb, HookLoad};
use tch::Tensor;

mod args;
mod section5;
mod section6;
mod section7;
mod serve;
mod shard;

#[derive(Parser)]
#[command(name = "emo", version, about = "Find and control the emotion circuits of language models")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Paper section 5, step 1: elicitation prompts for every scenario x valence x emotion, greedy replies,
    /// last-prompt-token residuals of every layer, judged; resumable.
    Elicit(section5::ElicitArgs),
    /// Step 2: emotion directions from a run's activations, their exports (control vectors, .npz), probes, PCA
    /// and cosine figures.
    Directions(section5::DirectionsArgs),
    /// Step 3: steer replies to neutral prompts with the run's directions, judged; resumable.
    Steer(section5::SteerArgs),
    /// Step 4: report.md with the run's tables and figures beside the paper's numbers.
    Report(section5::ReportArgs),
    /// Paper section 6, step 1: neuron contributions, head importances (closed form) and delta_mu from a
    /// section-5 run's elicitation samples; resumable. Writes RUN/attribution/{accepted|all}/.
    Attribute(section6::AttributeArgs),
    /// Section 6, step 2: ablate or enhance the top-k neurons or heads of every layer against random units
    /// (seeded), Delta s on the test split; resumable. Writes RUN/sweeps/{kind}-{units}-{positions}.csv.
    Sweep(section6::SweepArgs),
    /// Paper section 7, step 1: sublayer importance — inject alpha x sigma along each sublayer's direction at
    /// its output (last prompt token, neutral prompt) and read the final state on v_ref; resumable. Writes
    /// RUN/importance/{samples}/.
    Importance(section7::ImportanceArgs),
    /// Section 7, step 2: emotion circuits by the authors' budget rule (allocate, build, show).
    Circuits {
        #[command(subcommand)]
        command: section7::CircuitsCommand,
    },
    /// Section 7, step 3: circuit modulation of replies to neutral prompts, judged; resumable.
    Modulate(section7::ModulateArgs),
    /// All of section 5 on one model: elicit on both splits, directions, steering on the test split, report.
    Section5(section5::Section5Args),
    /// The whole paper on one model: sections 5, 6 and 7 end to end, resumable, one report.
    Paper(section7::PaperArgs),
    /// Combine the shards of a run's sharded stages (`--shard I/N`) into the outputs an unsharded run writes.
    Merge(shard::MergeArgs),
    /// An OpenAI-compatible chat-completion server; each request may steer or modulate its own reply.
    Serve(serve::ServeArgs),
    /// SEV scenario-event data: the built-in set or another in the paper's schema.
    Dataset {
        #[command(subcommand)]
        command: DatasetCommand,
    },
    /// Measure a judge against reference labels (schema of the paper's steering_labeled.jsonl).
    JudgeEval {
        /// JSONL with `emotion`, `gen_text`, `judge.match` per line.
        #[arg(long)]
        labels: std::path::PathBuf,
        /// lexicon (NRC word-emotion lexicon), embedding (all-MiniLM-L6-v2 + a classifier trained on the
        /// project's corpus), chat (the paper's judge prompt on --model), or openai (the paper's judge on an
        /// OpenAI-compatible endpoint); several joined by `+` (embedding+lexicon) match when any matches. The
        /// default is the local judge that measured best (docs/judges.md).
        #[arg(long, default_value = "embedding")]
        judge: String,
        /// For --judge openai: base URL including /v1 (default $OPENAI_BASE_URL or OpenAI's).
        #[arg(long)]
        base_url: Option<String>,
        /// For --judge openai: API key (default $OPENAI_API_KEY).
        #[arg(long)]
        api_key: Option<String>,
        /// For --judge openai: model name.
        #[arg(long, default_value = "gpt-4o-mini")]
        judge_model: String,
        /// For --judge openai: sampling temperature.
        #[arg(long, default_value_t = 0.0)]
        temperature: f64,
        /// Chat model for --judge chat.
        #[command(flatten)]
        model: ModelArgs,
        /// Texts per batch.
        #[arg(long, default_value_t = 16)]
        batch: usize,
        /// Judge an evenly spread subset of this many labels.
        #[arg(long)]
        limit: Option<usize>,
        /// One JSON line instead of a table.
        #[arg(long)]
        json: bool,
        /// Also write the labeled view's verdicts here, one JSON line per label judged (`label`: its 1-based
        /// number among the file's labels; `emotion`, `reference`, `matched`, `score`), to read disagreements.
        #[arg(long)]
        verdicts: Option<std::path::PathBuf>,
    },
    /// Print the file or folder a --model reference resolves to (aliases: smollm2-135m, qwen2.5-coder-0.5b, opt-in qwen2.5-coder-1.5b and gemma-3-270m).
    Resolve {
        /// Alias, path or Hugging Face repo id.
        #[arg(default_value = emo_model::model::DEFAULT_MODEL)]
        model: String,
    },
    /// Reply to each prompt with the model's chat template (greedy unless --temperature), optionally steered
    /// or modulated as `emo serve` does it; prints only the replies.
    Generate {
        #[command(flatten)]
        model: ModelArgs,
        /// System message.
        #[arg(long)]
        system: Option<String>,
        /// Maximum new tokens per reply.
        #[arg(long, default_value_t = 100)]
        max_new_tokens: usize,
        /// Minimum new tokens before end-of-sequence is allowed.
        #[arg(long, default_value_t = 0)]
        min_new_tokens: usize,
        /// Hugging Face repetition penalty (1.0 = off).
        #[arg(long, default_value_t = 1.0)]
        repetition_penalty: f32,
        /// Forbid repeated n-grams of this size (0 = off).
        #[arg(long, default_value_t = 0)]
        no_repeat_ngram_size: usize,
        /// One JSON object per prompt: {"prompt", "reply", "token_ids"}.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        control: serve::ControlArgs,
        /// The user prompts, decoded together in one batch.
        #[arg(required = true)]
        prompts: Vec<String>,
    },
    /// Time a forward pass and greedy generation (one JSON line), in the spirit of llama-bench.
    Bench {
        #[command(flatten)]
        model: ModelArgs,
        /// Batch size.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Prompt tokens per row.
        #[arg(long, default_value_t = 64)]
        tokens: usize,
        /// New tokens per row for the generation timing (forced length).
        #[arg(long, default_value_t = 64)]
        new_tokens: usize,
        /// Hooks carried: none, capture (4 sites x every layer, last token), edit (residual add on 10 layers),
        /// or compare: all three forward passes interleaved, with their ratios (no generation timing).
        #[arg(long, default_value = "none")]
        hooks: String,
        /// Timed repetitions of the forward pass (the median is reported).
        #[arg(long, default_value_t = 10)]
        reps: usize,
        /// Instead: for each N, N last-token sublayer-output injections on one prompt of --tokens tokens,
        /// evaluated by prefix branching against full forwards (--batch rows each), interleaved; one JSON
        /// line per N with both times and their ratio.
        #[arg(long, value_delimiter = ',')]
        branch: Vec<usize>,
    },
}

#[derive(Subcommand)]
enum DatasetCommand {
    /// Print a split as JSONL in the paper's schema.
    Export {
        /// sev (discovery) or test.
        #[arg(long, default_value = "sev")]
        split: String,
        /// A JSONL file (taken as that split) or a folder with sev.jsonl and test_set.jsonl; default: built-in.
        #[arg(long)]
        dataset: Option<std::path::PathBuf>,
    },
}

/// The `emo` binary: runs the process's command line, prints an error and exits 1 on failure.
pub fn main() {
    if let Err(e) = run(Cli::parse()) {
        // A closed pipe (`emo dataset export | head`) is the reader's choice, not an error.
        if e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) {
            return;
        }
        // A shard that has done its part of the stages the other shards share has succeeded.
        if shard::stopped_for_merge(&e) {
            println!("{e}");
            return;
        }
        eprintln!("emo: error: {e:#}");
        std::process::exit(1);
    }
}

/// Runs one `emo` command line in this process (`args[0]` is the program's name), returning what failed
/// instead of exiting. A shard that stopped for the others to finish (`--shard`) is a success here too.
pub fn run_command<I, T>(args: I) -> Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    match run(Cli::try_parse_from(args)?) {
        Err(e) if shard::stopped_for_merge(&e) => {
            println!("{e}");
            Ok(())
        }
        other => other,
    }
}

/// Writes to stdout, returning write errors (a closed pipe) instead of panicking like `print!`.
fn emit(text: impl std::fmt::Display) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    write!(out, "{text}")?;
    out.flush()?;
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Elicit(a) => section5::elicit(&a)?,
        Command::Directions(a) => section5::directions(&a)?,
        Command::Steer(a) => section5::steer(&a)?,
        Command::Report(a) => section5::report(&a)?,
        Command::Attribute(a) => section6::attribute_cmd(&a)?,
        Command::Sweep(a) => section6::sweep_cmd(&a)?,
        Command::Section5(a) => section5::section5(&a)?,
        Command::Importance(a) => section7::importance_cmd(&a)?,
        Command::Circuits { command } => section7::circuits_cmd(&command)?,
        Command::Modulate(a) => section7::modulate_cmd(&a)?,
        Command::Paper(a) => section7::paper(&a)?,
        Command::Merge(a) => shard::merge_cmd(&a)?,
        Command::Serve(a) => serve::serve_cmd(&a)?,
        Command::Dataset { command: DatasetCommand::Export { split, dataset } } => {
            let split: emo_data::Split = split.parse()?;
            let scenarios = emo_data::sev::load_split(dataset.as_deref(), split)?;
            emit(emo_data::sev::to_jsonl(&scenarios))?;
        }
        Command::JudgeEval { labels, judge, base_url, api_key, judge_model, temperature, model, batch, limit, json, verdicts } => {
            let mut all = emo_data::judge::load_labels(&labels)?;
            let mut numbers: Vec<usize> = (1..=all.len()).collect();
            if let Some(n) = limit.filter(|&n| n > 0 && n < all.len()) {
                let stride = all.len() as f64 / n as f64;
                numbers = (0..n).map(|i| (i as f64 * stride) as usize + 1).collect();
                all = numbers.iter().map(|&l| all[l - 1].clone()).collect();
            }
            let report = if judge == "chat" {
                let m = model.load()?;
                let mut j = emo_data::ChatJudge::new(&m, format!("chat:{}", model.model))?;
                emo_data::judge::evaluate(&mut j, &all, batch)?
            } else {
                let mut cfg = emo_data::OpenAiConfig::from_env();
                cfg.base_url = base_url.unwrap_or(cfg.base_url);
                cfg.api_key = api_key.or(cfg.api_key);
                cfg.model = judge_model;
                cfg.temperature = temperature;
                let mut j = section5::make_judge(&judge, cfg)?;
                emo_data::judge::evaluate(j.as_mut(), &all, batch)?
            };
            if let Some(path) = &verdicts {
                write_verdicts(path, &numbers, &all, &report.verdicts)?;
            }
            if json {
                let l = &report.labeled;
                let line = serde_json::json!({
                    "judge": report.judge, "n": l.n, "failures": l.failures, "api_failures": l.api_failures,
                    "parse_failures": l.parse_failures, "accuracy": l.accuracy,
                    "precision": l.precision, "recall": l.recall, "kappa": l.kappa, "texts_per_s": l.texts_per_s,
                    "cross": report.cross,
                });
                emit(format!("{line}\n"))?;
            } else {
                let mut t = format!("judge {}\n| view | n | API failures | parse failures | accuracy | precision | recall | kappa | texts/s |\n|---|---|---|---|---|---|---|---|---|\n", report.judge);
                for (name, a) in [("labeled", &report.labeled), ("cross-emotion", &report.cross)] {
                    t += &format!(
                        "| {name} | {} | {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.1} |\n",
                        a.n, a.api_failures, a.parse_failures, a.accuracy, a.precision, a.recall, a.kappa, a.texts_per_s
                    );
                }
                emit(t)?;
            }
        }
        Command::Resolve { model } => emit(format!("{}\n", emo_model::model::resolve(&model)?.display()))?,
        Command::Generate { model, system, max_new_tokens, min_new_tokens, repetition_penalty, no_repeat_ngram_size, json, control, prompts } => {
            let m = model.load()?;
            let conversations: Vec<Vec<ChatMessage>> = prompts
                .iter()
                .map(|p| {
                    let mut c = Vec::new();
                    if let Some(s) = &system {
                        c.push(ChatMessage::system(s));
                    }
                    c.push(ChatMessage::user(p));
                    c
                })
                .collect();
            let cfg = GenerationConfig {
                max_new_tokens,
                min_new_tokens,
                repetition_penalty,
                no_repeat_ngram_size,
                sampling: control.sampling(),
                ..Default::default()
            };
            // Every row gets the same edits, built as the server builds a request's.
            let row = control.control(m.transformer.config(), m.transformer.device())?;
            let mut hooks = emo_model::batcher::row_hooks(&vec![&row; conversations.len()]);
            let mut readouts = emo_model::Readouts::new(vec![row.readout.clone(); conversations.len()]);
            let replies = {
                let mut set = HookSet::new();
                set.push_all(&mut hooks);
                // After the edits, as in the server: the trace reads the state the reply goes on with.
                if !readouts.is_empty() {
                    set.push(&mut readouts);
                }
                m.generate_chat(&conversations, &cfg, &mut set)?
            };
            let forwards = readouts.take()?;
            for (i, (prompt, r)) in prompts.iter().zip(replies).enumerate() {
                let trace = if control.trace { Some(emo_steer::EmotionTrace::of_row(&m, &r.generated.tokens, &forwards, i)?) } else { None };
                if json {
                    let mut line = serde_json::json!({"prompt": prompt, "reply": r.text, "token_ids": r.generated.tokens});
                    if let Some(t) = &trace {
                        line["emotion_trace"] = t.to_json();
                    }
                    emit(format!("{line}\n"))?;
                } else {
                    emit(format!("{}\n", r.text.trim()))?;
                    if let Some(t) = &trace {
                        emit(serve::trace_table(t))?;
                    }
                }
            }
        }
        Command::Bench { model, batch, tokens, new_tokens, hooks, reps, branch } => {
            anyhow::ensure!(batch > 0 && tokens > 0 && reps > 0, "--batch, --tokens and --reps must be positive");
            if !branch.is_empty() {
                return bench_branching(&model, &branch, tokens, batch, reps);
            }
            let compare = hooks == "compare";
            let loads: Vec<HookLoad> = if compare { vec![HookLoad::None, HookLoad::Capture, HookLoad::Edit] } else { vec![hooks.parse()?] };
            let m = model.load()?;
            let t = &m.transformer;
            let cfg = t.config();
            // Deterministic pseudo-text: the speed of a pass does not depend on which ids it sees.
            tch::manual_seed(0);
            let ids = Tensor::randint(cfg.vocab_size as i64, [batch as i64, tokens as i64], (tch::Kind::Int64, tch::Device::Cpu));
            let valid = Tensor::ones([batch as i64, tokens as i64], (tch::Kind::Bool, tch::Device::Cpu));
            let lens = vec![tokens as i64; batch];
            let mut hook_objs: Vec<_> = loads.iter().map(|&l| hooks_for(l, cfg)).collect();
            let mut one_forward = |k: usize| -> Result<f64> {
                let mut set = HookSet::new();
                if let Some(h) = hook_objs[k].as_deref_mut() {
                    set.push(h);
                }
                let mut state = DecodeState::new(&lens, cfg.n_layers, t.device(), false);
                let start = Instant::now();
                let out = t.forward_chunk(&ids, &valid, &mut state, &mut set, LogitsFor::Last)?;
                let _ = out.sum(tch::Kind::Float).double_value(&[]); // wait for the device
                Ok(start.elapsed().as_secs_f64() * 1e3)
            };
            // Interleaved rounds, so that drift in the machine's speed hits every workload alike.
            let mut times: Vec<Vec<f64>> = vec![Vec::new(); loads.len()];
            for k in 0..loads.len() {
                one_forward(k)?; // warm-up
            }
            for _ in 0..reps {
                for (k, ts) in times.iter_mut().enumerate() {
                    ts.push(one_forward(k)?);
                }
            }
            for ts in &mut times {
                ts.sort_by(f64::total_cmp);
            }
            let median = |ts: &Vec<f64>| ts[ts.len() / 2];
            let mut line = serde_json::json!({
                "model": model.model,
                "device": device_name(t.device()),
                "dtype": kind_name(t.kind()),
                "weights": model.load.weights,
                "weight_mb": t.weight_bytes().0 as f64 / 1e6,
                "threads": tch::get_num_threads(),
                "batch": batch,
                "tokens": tokens,
                "reps": reps,
                "hooks": hooks,
            });
            if compare {
                let base = median(&times[0]);
                line["forward_ms"] = serde_json::json!({"none": base, "capture": median(&times[1]), "edit": median(&times[2])});
                line["ratio_to_none"] = serde_json::json!({"capture": median(&times[1]) / base, "edit": median(&times[2]) / base});
                emit(format!("{line}\n"))?;
                return Ok(());
            }
            let times = &times[0];
            let forward_ms = median(times);
            let mut hook = hook_objs.pop().flatten();

            let prompts: Vec<Vec<u32>> = Vec::<i64>::try_from(ids.view(-1))?.chunks(tokens).map(|c| c.iter().map(|&x| x as u32).collect()).collect();
            let gcfg = GenerationConfig { max_new_tokens: new_tokens, ignore_eos: true, ..Default::default() };
            let mut set = HookSet::new();
            if let Some(h) = hook.as_deref_mut() {
                set.push(h);
            }
            let start = Instant::now();
            let out = m.generate_ids(&prompts, &gcfg, &mut set)?;
            let secs = start.elapsed().as_secs_f64();
            let produced: usize = out.iter().map(|g| g.tokens.len()).sum();
            line["new_tokens"] = new_tokens.into();
            line["forward_ms"] = forward_ms.into();
            line["forward_ms_min"] = times[0].into();
            line["generate_s"] = secs.into();
            line["generate_tokens_per_s"] = (produced as f64 / secs).into();
            line["peak_rss_mb"] = peak_rss_mb().into();
            emit(format!("{line}\n"))?;
        }
    }
    Ok(())
}

/// `emo bench --branch`: prefix branching against full forwards on the same interventions and read-out.
fn bench_branching(model: &ModelArgs, ns: &[usize], tokens: usize, batch: usize, reps: usize) -> Result<()> {
    anyhow::ensure!(tokens >= 2, "--tokens must be at least 2 for branching");
    let m = model.load()?;
    let t = &m.transformer;
    let cfg = t.config();
    tch::manual_seed(0);
    let prompt: Vec<u32> = Vec::<i64>::try_from(Tensor::randint(cfg.vocab_size as i64, [tokens as i64], (tch::Kind::Int64, tch::Device::Cpu)))?
        .into_iter()
        .map(|x| x as u32)
        .collect();
    for &n in ns {
        anyhow::ensure!(n > 0, "--branch counts must be positive");
        let rows = emo_run::bench::sublayer_injections(cfg, n);
        let read = || Capture::new([HookPoint::LnFinal], Positions::LastPrompt);
        let branched = || -> Result<(f64, Tensor)> {
            let start = Instant::now();
            let mut prefix = t.prefill_prefix(std::slice::from_ref(&prompt), m.pad_token_id())?;
            let mut edits = Interventions::new(rows.clone(), Positions::LastPrompt);
            let mut cap = read();
            let _ = t.forward_branches(&mut prefix, &vec![0; n], &mut HookSet::new().with(&mut edits).with(&mut cap), LogitsFor::Skip)?;
            let out = cap.per_row(HookPoint::LnFinal, n)?;
            Ok((start.elapsed().as_secs_f64() * 1e3, out))
        };
        let full = || -> Result<(f64, Tensor)> {
            let start = Instant::now();
            let mut outs = Vec::new();
            for chunk in rows.chunks(batch) {
                let mut edits = Interventions::new(chunk.to_vec(), Positions::LastPrompt);
                let mut cap = read();
                let prompts = vec![prompt.clone(); chunk.len()];
                let _ = t.forward_rows(&prompts, m.pad_token_id(), &mut HookSet::new().with(&mut edits).with(&mut cap), LogitsFor::Skip)?;
                outs.push(cap.per_row(HookPoint::LnFinal, chunk.len())?);
            }
            Ok((start.elapsed().as_secs_f64() * 1e3, Tensor::cat(&outs, 0)))
        };
        let (_, a) = branched()?; // warm-up, and the two must agree
        let (_, b) = full()?;
        let max_abs_diff = f64::try_from((&a - &b).abs().max())?;
        let (mut tb, mut tf) = (Vec::new(), Vec::new());
        for _ in 0..reps {
            tb.push(branched()?.0);
            tf.push(full()?.0);
        }
        tb.sort_by(f64::total_cmp);
        tf.sort_by(f64::total_cmp);
        let (mb, mf) = (tb[tb.len() / 2], tf[tf.len() / 2]);
        let line = serde_json::json!({
            "model": model.model,
            "device": device_name(t.device()),
            "dtype": kind_name(t.kind()),
            "threads": tch::get_num_threads(),
            "tokens": tokens,
            "interventions": n,
            "full_batch": batch,
            "reps": reps,
            "branch_ms": mb,
            "full_ms": mf,
            "speedup": mf / mb,
            "max_abs_diff": max_abs_diff,
            "peak_rss_mb": peak_rss_mb(),
        });
        emit(format!("{line}\n"))?;
    }
    Ok(())
}

/// `judge-eval --verdicts`: one JSON line per label with the judge's verdict beside the reference.
fn write_verdicts(path: &std::path::Path, numbers: &[usize], labels: &[emo_data::judge::Labeled], verdicts: &[emo_data::Verdict]) -> Result<()> {
    let mut out = String::new();
    for ((number, l), v) in numbers.iter().zip(labels).zip(verdicts) {
        let row = serde_json::json!({"label": number, "emotion": l.emotion.name(), "reference": l.matched, "matched": v.matched, "score": v.score});
        out += &format!("{row}\n");
    }
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
}
