//! `brume bench predictor`: seed 000's evaluation of the checkpoint-duration models on a trace
//! of real dumps.
//!
//! It reads the trace CSV (`brume trace checkpoints` writes it; default
//! testnet/bench/traces/checkpoints.csv), replays it in order through PB-MLR, least-squares MLR
//! and the Bayesian model (mean, and the mean + z·sd bound the planner uses), with PB-MLR's
//! variants (without the machine-load features, a relative late scale, the log-space form;
//! [`crate::predictor_variants`]), each predicting a dump before learning from it, beside the
//! best static value in hindsight, and prints seed
//! 000's table (late %, early %, mean lost computation, MAE), the cross-validated R² of the MLR
//! fit, how many dumps PB-MLR needs before its late rate stays within 5%, and the learning curve
//! as an SVG a person can open. The replay is brume-migration's pure
//! `predictor::evaluate`; this module only reads the file, prints and draws. With
//! `--drain-trials N` it then runs issue 14's drain test on local daemons
//! ([`crate::predictor_drain`]) and adds its figures to the BENCH line.

use std::path::{Path, PathBuf};

use anyhow::Context;
use brume_migration::predictor::calibrated::{Calibrated, NAME as CONFORMAL};
use brume_migration::predictor::evaluate::{self, Report};
use brume_migration::predictor::margin::Margin;
use brume_migration::predictor::mlr::{Mlr, WINDOW};
use brume_migration::predictor::pbmlr::{PbMlr, PbMlrConfig};
use brume_migration::predictor::static_best::StaticBest;
use brume_migration::predictor::{trace, BayesModel, Model, PredictorConfig};

use crate::predictor_drain;
use crate::predictor_svg;
use crate::predictor_variants::{Named, WithoutLoad};

/// The dumps the conformal margin keeps (what a node keeps).
const CONFORMAL_KEEP: usize = brume_migration::predictor::calibrated::KEEP;

/// Where the trace lives in the repository.
pub const TRACE: &str = "testnet/bench/traces/checkpoints.csv";

/// The `pbmlr-rel` variant's late scale: a prediction late by this share of the dump's own
/// duration costs seed 000's full penalty. Fixed before any replay (a round figure, the same
/// share as the late-rate target), not tuned on a trace.
const LATE_SCALE_REL: f64 = 0.05;

/// Options of `brume bench predictor`.
#[derive(Debug, Clone, clap::Args)]
pub struct PredictorArgs {
    /// The trace CSV (default: testnet/bench/traces/checkpoints.csv from the current directory,
    /// else from this build's source tree).
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// Where to write the learning curve (SVG).
    #[arg(long, default_value = "target/predictor-learning.svg")]
    pub svg: PathBuf,
    /// Predictions per point of the learning curve (trailing window).
    #[arg(long, default_value_t = 20)]
    pub window: usize,
    /// Folds of the cross-validated R² (interleaved).
    #[arg(long, default_value_t = 10)]
    pub folds: usize,
    /// The late rate (%) PB-MLR must stay within for `dumps_to_learn`.
    #[arg(long, default_value_t = 5.0)]
    pub max_late_pct: f64,
    /// Predictions that must follow for a late rate to count in `dumps_to_learn`.
    #[arg(long, default_value_t = 20)]
    pub min_span: usize,
    /// PB-MLR's late scale σ in seconds (a prediction late by σ costs seed 000's full penalty);
    /// default: the predictor config's noise_sd (0.05 s).
    #[arg(long)]
    pub late_scale_s: Option<f64>,
    /// Traces every online model learns from first, in order, before the replay (a node that
    /// starts from dumps measured elsewhere instead of from the prior). Repeatable; the BENCH
    /// line then gains `pretrain_dumps`. Never the replayed trace itself.
    #[arg(long, value_name = "TRACE")]
    pub pretrain: Vec<PathBuf>,
    /// Also print every dump: measured duration and each model's prediction.
    #[arg(long)]
    pub show_dumps: bool,
    /// After the replay, run this many drain trials on local daemons
    /// ([`crate::predictor_drain`]; needs root and CRIU >= 4.2) and add
    /// `drain_deadline_met_pct`, `over_budget_freezes` and `drain_trials` to the BENCH line.
    /// 0: the replay only.
    #[arg(long, default_value_t = 0)]
    pub drain_trials: usize,
    /// The drain trials' `brume drain --deadline`, in seconds.
    #[arg(long, default_value_t = 20)]
    pub drain_deadline_s: u64,
    /// The moved task's `downtime_budget_ms` in the drain trials.
    #[arg(long, default_value_t = 2000)]
    pub drain_budget_ms: u64,
    /// The static relay binary the drain trials deploy (built by scripts/build-static.sh).
    #[arg(long)]
    pub relay: Option<PathBuf>,
}

fn trace_path(arg: Option<&Path>) -> PathBuf {
    if let Some(p) = arg {
        return p.to_path_buf();
    }
    let here = PathBuf::from(TRACE);
    if here.is_file() {
        return here;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("traces/checkpoints.csv")
}

fn ratio(a: f64, b: f64, what: &str) -> anyhow::Result<f64> {
    let r = a / b;
    anyhow::ensure!(r.is_finite(), "{what}: {a} / {b} is not a number");
    Ok(r)
}

pub fn run(args: &PredictorArgs) -> anyhow::Result<()> {
    // The drain trials' needs are checked before the replay, so a missing one fails at once.
    let drain = if args.drain_trials > 0 {
        predictor_drain::check_system()?;
        Some(predictor_drain::DrainSetup {
            trials: args.drain_trials,
            deadline: std::time::Duration::from_secs(args.drain_deadline_s),
            budget_ms: args.drain_budget_ms,
            relay: match &args.relay {
                Some(p) => p.clone(),
                None => crate::relay_default()?,
            },
        })
    } else {
        None
    };
    let path = trace_path(args.trace.as_deref());
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("read the trace {}", path.display()))?;
    let dumps = trace::parse(&text).with_context(|| format!("parse {}", path.display()))?;
    anyhow::ensure!(!dumps.is_empty(), "{} holds no dumps", path.display());
    let mut tasks: Vec<&str> = dumps.iter().map(|d| d.task.as_str()).collect();
    tasks.sort_unstable();
    tasks.dedup();
    let mut workloads: Vec<&str> = dumps.iter().map(|d| d.workload.as_str()).collect();
    workloads.sort_unstable();
    workloads.dedup();
    let durations: Vec<f64> = dumps.iter().map(|d| d.dump_s).collect();
    let (lo, hi) = durations
        .iter()
        .fold((f64::INFINITY, 0.0f64), |(l, h), &v| (l.min(v), h.max(v)));
    println!(
        "predictor: {} ({} dumps of {} tasks; workloads {}; dumps {:.3}-{:.3} s)",
        path.display(),
        dumps.len(),
        tasks.len(),
        workloads.join(", "),
        lo,
        hi
    );

    let cfg = PredictorConfig::default();
    let samples: Vec<(f64, f64)> = dumps
        .iter()
        .map(|d| (d.dump_s, d.features.since_checkpoint_s()))
        .collect();
    // The BENCH model: PB-MLR as a node runs it (multiplicative form, seed 000's selection).
    let pb_cfg = PbMlrConfig::default();
    // The linear form, as seed 000 writes it (σ from --late-scale-s).
    let lin_cfg = PbMlrConfig {
        log_space: false,
        late_scale_s: args.late_scale_s,
        ..pb_cfg
    };
    let mut pb = PbMlr::new(&cfg, pb_cfg);
    let mut pb_all = Named {
        name: "pbmlr-all",
        model: PbMlr::new(
            &cfg,
            PbMlrConfig {
                select: None,
                ..pb_cfg
            },
        ),
    };
    let mut pb_lin = PbMlr::new(&cfg, lin_cfg);
    let mut pb_lin_all = Named {
        name: "pbmlr-lin-all",
        model: PbMlr::new(
            &cfg,
            PbMlrConfig {
                select: None,
                ..lin_cfg
            },
        ),
    };
    let mut pb_noload = WithoutLoad(Named {
        name: "pbmlr-noload",
        model: PbMlr::new(&cfg, pb_cfg),
    });
    let mut pb_rel = Named {
        name: "pbmlr-lin-rel",
        model: PbMlr::new(
            &cfg,
            PbMlrConfig {
                late_scale_rel: Some(LATE_SCALE_REL),
                ..lin_cfg
            },
        ),
    };
    let mut mlr_noload = WithoutLoad(Named {
        name: "mlr-noload",
        model: Mlr::new(&cfg, WINDOW),
    });
    let mut mlr = Mlr::new(&cfg, WINDOW);
    let mut bayes = BayesModel::mean(&cfg);
    let mut bayes_up = BayesModel::upper(&cfg);
    let mut stat = StaticBest::fit(&samples);
    let mut conformal = Calibrated::new(
        PbMlr::new(&cfg, pb_cfg),
        args.max_late_pct / 100.0,
        CONFORMAL_KEEP,
    );
    let mut margin = Margin::new(PbMlr::new(&cfg, pb_cfg), WINDOW);
    let mut models: [&mut dyn Model; 13] = [
        &mut pb as &mut dyn Model,
        &mut pb_all,
        &mut pb_lin,
        &mut pb_lin_all,
        &mut pb_noload,
        &mut pb_rel,
        &mut mlr,
        &mut mlr_noload,
        &mut bayes,
        &mut bayes_up,
        &mut stat,
        &mut conformal,
        &mut margin,
    ];
    let mut pretrained = 0;
    for path in &args.pretrain {
        anyhow::ensure!(
            std::fs::canonicalize(path).ok()
                != std::fs::canonicalize(trace_path(args.trace.as_deref())).ok(),
            "--pretrain {} is the replayed trace itself",
            path.display()
        );
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("read the pretraining trace {}", path.display()))?;
        let first = trace::parse(&text).with_context(|| format!("parse {}", path.display()))?;
        evaluate::pretrain(&first, &mut models);
        pretrained += first.len();
        println!(
            "pretrained every online model on {} ({} dumps)",
            path.display(),
            first.len()
        );
    }
    let reports = evaluate::replay(&dumps, &mut models);
    let by = |name: &str| -> anyhow::Result<&Report> {
        reports
            .iter()
            .find(|r| r.name == name)
            .with_context(|| format!("no report of {name}"))
    };

    if args.show_dumps {
        print!("{:>5} {:>8} {:>9}", "dump", "task", "took (s)");
        for r in &reports {
            print!(" {:>11}", r.name);
        }
        println!();
        for (i, d) in dumps.iter().enumerate() {
            print!("{:>5} {:>8} {:>9.3}", d.dump, d.task, d.dump_s);
            for r in &reports {
                let o = r.outcomes[i];
                print!(" {:>10.3}{}", o.predicted, if o.late() { "L" } else { " " });
            }
            println!();
        }
    }
    println!();
    println!("replayed in order, each model predicting a dump before learning from it (seed 000, section V):");
    println!(
        "{:<22} {:>7} {:>8} {:>15} {:>9}",
        "model", "late %", "early %", "mean lost (s)", "MAE (s)"
    );
    for r in &reports {
        let label = if r.name == "static-best" {
            format!("static-best ({:.3} s)", stat.value())
        } else if r.name == "bayes+zsd" {
            format!("bayes+{}sd (planner)", cfg.z)
        } else {
            r.name.to_string()
        };
        println!(
            "{:<22} {:>7.1} {:>8.1} {:>15.3} {:>9.3}",
            label,
            r.late_pct(),
            r.early_pct(),
            r.mean_lost(),
            r.mae()
        );
    }
    println!("lost computation: early ŷ − y; late e + ŷ, e = seconds since the task's last checkpoint (Equation 3)");
    println!("static-best is the constant with the least lost computation over the whole trace: offline, in hindsight");
    let names = |m: &PbMlr| -> String {
        let table: &[&str] = if m.config().log_space {
            &brume_migration::predictor::features::LOG_NAMES
        } else {
            &brume_migration::predictor::features::NAMES
        };
        m.active()
            .iter()
            .map(|&j| table.get(j).copied().unwrap_or("?"))
            .collect::<Vec<_>>()
            .join(" + ")
    };
    println!(
        "pbmlr: seed 000's PB-MLR as a node runs it: its cost on ln(seconds) over logs of the features (multiplicative, σ = {} × the dump), with seed 000's feature selection (VIF <= {}, p <= {}, from {} dumps) redone before every refit; it ended on: {}",
        brume_migration::predictor::pbmlr::LOG_LATE_SCALE,
        pb_cfg.select.map_or(f64::NAN, |s| s.vif_max),
        pb_cfg.select.map_or(f64::NAN, |s| s.p_max),
        pb_cfg.select.map_or(0, |s| s.min_samples),
        names(&pb)
    );
    println!("pbmlr-all: the same fitted on every feature (no selection)");
    println!(
        "pbmlr-lin: the linear form (seconds on the features, as seed 000 writes it), with selection; it ended on: {}",
        names(&pb_lin)
    );
    println!("pbmlr-lin-all: the linear form on every feature (the BENCH model before selection and the multiplicative form)");
    println!("pbmlr-lin-rel: the linear form with the late scale σ = {LATE_SCALE_REL} × the dump's own duration instead of a fixed noise_sd (fixed before the replay)");
    println!("-noload: the same model with the machine-load features hidden (the feature vector before they were recorded)");
    println!("pbmlr+margin is ours, not seed 000's: PB-MLR scaled by the factor that would have lost the least computation over its own past predictions (final factor {:.3})", margin.factor());
    println!(
        "pbmlr+conformal is ours, not seed 000's: PB-MLR plus q·(ŷ + c), c the median dump so far, q the {:.0}% conformal quantile of its own past (y − ŷ)/(ŷ + c) over the last {} dumps (the prior's before {} were scored): what a node runs by default, and the BENCH line's model",
        100.0 * (1.0 - args.max_late_pct / 100.0),
        CONFORMAL_KEEP,
        (100.0 / args.max_late_pct).ceil() as usize - 1
    );

    // What a node choosing by this measure would run: the online model with the least lost
    // computation (static-best needs the whole trace in advance, so it cannot be chosen).
    if let Some(best) = reports
        .iter()
        .filter(|r| r.name != "static-best")
        .min_by(|a, b| a.mean_lost().total_cmp(&b.mean_lost()))
    {
        println!(
            "least lost computation among the online models: {} ({:.3} s per dump)",
            best.name,
            best.mean_lost()
        );
    }

    let cv = evaluate::cross_validated_r2(&dumps, args.folds, &cfg);
    let loo = evaluate::cross_validated_r2(&dumps, dumps.len(), &cfg);
    println!();
    println!(
        "MLR fit, cross-validated R²: {}-fold (interleaved) {:.3} ± {:.3} per fold, pooled {:.3}; leave-one-out pooled {:.3}",
        args.folds.clamp(2, dumps.len().max(2)),
        cv.mean(),
        cv.sd(),
        cv.pooled,
        loo.pooled
    );

    // The BENCH model: what a node runs by default, PB-MLR with its conformal margin; plain
    // PB-MLR's figures beside it.
    let pbr = by(CONFORMAL)?;
    let plain = by("pbmlr")?;
    let learned = evaluate::dumps_to_learn(pbr, args.max_late_pct / 100.0, args.min_span);
    let plain_learned = evaluate::dumps_to_learn(plain, args.max_late_pct / 100.0, args.min_span);
    for (name, report, n) in [(CONFORMAL, pbr, learned), ("pbmlr", plain, plain_learned)] {
        match n {
            Some(n) => {
                let rest = Report {
                    name: report.name,
                    outcomes: report.outcomes[n..].to_vec(),
                };
                println!(
                    "{name} within {}% late after {n} dumps (every span of >= {} later predictions); after it: late {:.1}%, mean lost {:.3} s over {} dumps",
                    args.max_late_pct,
                    args.min_span,
                    rest.late_pct(),
                    rest.mean_lost(),
                    rest.n()
                );
            }
            None => println!(
                "{name} never stays within {}% late in this trace (dumps_to_learn=-1)",
                args.max_late_pct
            ),
        }
    }

    for name in [
        "pbmlr-all",
        "pbmlr-lin",
        "pbmlr-lin-all",
        "pbmlr-noload",
        "pbmlr-lin-rel",
        "pbmlr+margin",
    ] {
        let n = evaluate::dumps_to_learn(by(name)?, args.max_late_pct / 100.0, args.min_span);
        println!("{name}: dumps_to_learn={}", n.map_or(-1, |n| n as i64));
    }

    let svg = predictor_svg::render(&reports, args.window, args.max_late_pct);
    if let Some(dir) = args.svg.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    std::fs::write(&args.svg, svg).with_context(|| format!("write {}", args.svg.display()))?;
    println!(
        "learning curve (trailing {} predictions): {}",
        args.window,
        args.svg.display()
    );

    let lost_vs_mlr = ratio(pbr.mean_lost(), by("mlr")?.mean_lost(), "lost_vs_mlr")?;
    let lost_vs_static = ratio(
        pbr.mean_lost(),
        by("static-best")?.mean_lost(),
        "lost_vs_static",
    )?;
    let learned = learned.map_or(-1, |n| n as i64);
    let plain_learned = plain_learned.map_or(-1, |n| n as i64);
    println!(
        "the BENCH line's keys are {CONFORMAL}'s (a node's default); pbmlr_* are plain PB-MLR's"
    );
    let mut bench = format!(
        "BENCH predictor late_pct={:.2} early_pct={:.2} lost_vs_mlr={:.3} lost_vs_static={:.3} dumps_to_learn={learned} pbmlr_late_pct={:.2} pbmlr_dumps_to_learn={plain_learned}",
        pbr.late_pct(),
        pbr.early_pct(),
        lost_vs_mlr,
        lost_vs_static,
        plain.late_pct(),
    );
    if pretrained > 0 {
        bench += &format!(" pretrain_dumps={pretrained}");
    }
    if let Some(setup) = &drain {
        if cfg!(debug_assertions) {
            eprintln!("warning: this is a debug build of brume-bench (the daemons are the brume beside it)");
        }
        let trials = predictor_drain::run(setup)?;
        let (pct, over) = predictor_drain::summary(setup, &trials);
        let met = trials.iter().filter(|t| t.met(setup.deadline)).count();
        println!(
            "every task on its new host before the {} s deadline in {met} of {} trials; \
             freezes over the {} ms budget: {over}",
            setup.deadline.as_secs(),
            trials.len(),
            setup.budget_ms
        );
        bench += &format!(
            " drain_deadline_met_pct={pct:.1} over_budget_freezes={over} drain_trials={}",
            trials.len()
        );
    }
    println!("{bench}");
    Ok(())
}
