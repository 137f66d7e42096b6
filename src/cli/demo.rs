//! `leadflow demo` on the terminal: a progress bar, then a summary table;
//! exit code 1 if any lead is unaccounted for. The work is `leadflow::demo`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use leadflow::config::Config;
use leadflow::demo::{Demo, DemoOptions, DemoReport};
use leadflow::health::Health;
use leadflow::health::Observed;
use leadflow::metrics::{GradeLabels, Metrics, OutcomeLabels};

use crate::cli::common::serve_http;

#[derive(Args)]
pub struct DemoArgs {
    /// Number of generated leads.
    #[arg(long, default_value_t = 100_000)]
    pub leads: u64,
    /// Random seed; the same seed gives the same leads.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// Runs the demo; an error if anything does not add up.
pub fn run_demo(
    config: &Config,
    runtime: &tokio::runtime::Runtime,
    leads: u64,
    seed: u64,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let observed = Observed {
        metrics: Arc::new(Metrics::new()),
        health: Arc::new(Health::default()),
    };
    // A busy port must not spoil a demo: fall back to any free one.
    let listener = std::net::TcpListener::bind(config.http.listen.trim())
        .or_else(|_| std::net::TcpListener::bind("127.0.0.1:0"))?;
    let address = serve_http(runtime, listener, &observed)?;

    let demo = Demo::start(config, DemoOptions { leads, seed })?;
    println!(
        "leadflow demo: {leads} generated leads on an in-process mock Kafka cluster \
         ({} partitions per topic, at-least-once); metrics at http://{address}/metrics",
        demo.partitions
    );
    let spinner = ProgressBar::new_spinner().with_message(format!("producing {leads} leads"));
    spinner.enable_steady_tick(Duration::from_millis(100));
    let expected = demo.produce()?;
    spinner.finish_and_clear();

    let bar = ProgressBar::new(leads).with_style(
        ProgressStyle::with_template(
            "{spinner} processing [{bar:40}] {pos}/{len} leads, {per_sec}, {elapsed}",
        )?
        .progress_chars("=> "),
    );
    let done = AtomicBool::new(false);
    let shutdown = AtomicBool::new(false);
    let (tally, processing) = std::thread::scope(|scope| {
        // From the first lead counted to the last, so that joining the
        // group and noticing the end do not count as processing.
        let watcher = scope.spawn(|| {
            let (mut first, mut last) = (None, None);
            while !done.load(Ordering::Relaxed) {
                let counted = leads_counted(&observed.metrics);
                bar.set_position(counted);
                if counted > 0 {
                    first.get_or_insert_with(Instant::now);
                }
                if counted == leads {
                    last.get_or_insert_with(Instant::now);
                }
                std::thread::sleep(Duration::from_millis(50)); // progress refresh rate
            }
            first.zip(last).map(|(first, last)| last - first)
        });
        let tally = demo.run(&observed, &shutdown, Some(address));
        done.store(true, Ordering::Relaxed);
        (tally, watcher.join().ok().flatten())
    });
    let tally = tally?;
    bar.finish_and_clear();
    let processing = processing.unwrap_or(bar.elapsed());

    let report = demo.report(expected, tally, started)?;
    print_summary(&demo, &report, &observed.metrics, processing);
    let problems = report.problems(&demo.config);
    if !problems.is_empty() {
        anyhow::bail!("the demo does not add up: {}", problems.join("; "));
    }
    println!("\nEvery lead is accounted for: the topics hold exactly what the generator expects.");
    Ok(())
}

/// Leads with an outcome so far.
fn leads_counted(metrics: &Metrics) -> u64 {
    ["campaign", "suppressed", "duplicate", "test", "dead_letter"]
        .iter()
        .map(|outcome| {
            metrics
                .leads
                .get_or_create(&OutcomeLabels { outcome })
                .get()
        })
        .sum()
}

fn print_summary(demo: &Demo, report: &DemoReport, metrics: &Metrics, processing: Duration) {
    let tally = &report.tally;
    let config = &demo.config;
    let row = |label: &str, value: u64, note: &str| {
        println!("{}", format!("  {label:<44} {value:>9}  {note}").trim_end());
    };
    println!();
    row("leads in", tally.inputs, &config.topics.input);
    for route in &config.routes {
        let written = tally.campaigns.get(&route.campaign).copied().unwrap_or(0);
        row(
            &format!("campaign {}", route.campaign),
            written,
            &route.topic,
        );
    }
    row(
        "suppressed",
        tally.suppressed_total(),
        &config.topics.suppressed,
    );
    for (reason, n) in &tally.suppressed {
        row(&format!("  {reason}"), *n, "");
    }
    row("duplicates dropped", tally.duplicates, "");
    row("test leads dropped", tally.test_leads, "");
    row(
        "dead letters",
        tally.dead_letters(),
        &config.topics.dead_letter,
    );
    for (class, n) in &tally.dead_letter {
        row(&format!("  {class}"), *n, "");
    }
    println!("  listings of leads routed or suppressed");
    for (listing, n) in &tally.listings {
        let note = if listing == "unknown" {
            "offer not in the catalog"
        } else {
            ""
        };
        row(&format!("  {listing}"), *n, note);
    }
    println!("  grades");
    for grade in ["A", "B", "C", "D"] {
        let n = metrics.grades.get_or_create(&GradeLabels { grade }).get();
        row(&format!("  {grade}"), n, "");
    }
    let seconds = processing.as_secs_f64().max(1e-3);
    println!(
        "  {:<44} {:>9.0}  leads/s over {:.1} s of processing",
        "throughput",
        tally.inputs as f64 / seconds,
        seconds
    );
    println!(
        "  {:<44} {:>9.1}  s, with start-up and the read-back check",
        "wall time",
        report.wall.as_secs_f64()
    );
}
