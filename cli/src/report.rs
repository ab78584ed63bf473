//! `baton report`: what each finished job measured, as tables and small plots in the terminal.

use crate::compare::{Comparison, Verdict};
use crate::html::{fits, lawful};
use crate::show::table;
use crate::tidy::{MAIN_TIMES, Row, Unit, axis_title, factors};
use baton_proto::job::display_name;
use baton_proto::spec::sweep::short_names;
use baton_proto::v1::{
    BrowserReport, Gpt2InferReport, Gpt2RunConfig, Gpt2TrainReport, Job, JobState, PhaseStats, job_result,
};
use comfy_table::Table;

/// One job; a sweep as the table of its points (`points`, measured in `rows`).
pub fn print(job: &Job, points: &[Job], rows: &[Row]) {
    let name = job.spec.as_ref().map(display_name).unwrap_or("");
    println!("\n━━ {name} ({}) — {} ━━", job.id, job.state().short_name());
    if !job.reason.is_empty() {
        println!("reason: {}", job.reason);
    }
    let Some(c) = &job.sweep else {
        measured(job);
        return;
    };
    println!(
        "sweep of {} points: {} succeeded, {} failed, {} cancelled, {} running, {} queued",
        c.points, c.succeeded, c.failed, c.cancelled, c.running, c.queued
    );
    sweep(rows);
    for p in points.iter().filter(|p| p.state() != JobState::Succeeded) {
        let name = p.spec.as_ref().map(display_name).unwrap_or("");
        println!("{name} ({}): {} {}", p.id, p.state().short_name(), p.reason);
    }
}

/// `baton compare`: a line per figure, regressions first.
pub fn comparison(found: &[Comparison], threshold: f64) {
    let mut t = table(&["point", "step", "figure", "A median", "B median", "B/A", "95% CI", "p", "n A/B", "verdict"]);
    let mut sorted: Vec<&Comparison> = found.iter().collect();
    sorted.sort_by_key(|c| c.verdict != Verdict::Regression);
    for c in sorted {
        let value = |v: f64| if c.unit == Unit::Ms { ms(v) } else { format!("{v:.3}") };
        t.add_row([
            c.point.clone(),
            c.step.clone(),
            c.figure.clone(),
            value(c.a_median),
            value(c.b_median),
            format!("{:.3}", c.ratio),
            format!("{:.3}–{:.3}", c.ci.0, c.ci.1),
            format!("{:.3}", c.p),
            format!("{}/{}", c.a_count, c.b_count),
            c.verdict.name().to_string(),
        ]);
    }
    println!("{t}");
    println!("a regression: worse by more than {:.0} % with p < 0.05 (Mann–Whitney U)", threshold * 100.0);
}

/// Figures shown per point in the terminal (all of them are in the exports).
const HEADLINE: [&str; 12] = [
    "stepMs",
    "forwardMs",
    "backwardMs",
    "optimizerMs",
    "tokensPerS",
    "mfu",
    "ttftMs",
    "tpotMs",
    "scenarioWallMs",
    "loadMs",
    "interactionBrowserMs",
    "sleptMs",
];

/// A line per point with the medians of its headline figures, then the power laws
/// fitted against each numeric factor.
fn sweep(rows: &[Row]) {
    let factors = factors(rows);
    let mut columns: Vec<(&str, &str)> = Vec::new();
    for r in rows.iter().filter(|r| HEADLINE.contains(&r.figure.as_str())) {
        if !columns.contains(&(r.step.as_str(), r.figure.as_str())) {
            columns.push((&r.step, &r.figure));
        }
    }
    let mut headers: Vec<String> = short_names(&factors);
    headers.push("device".into());
    headers
        .extend(columns.iter().map(|(step, f)| if step.is_empty() { f.to_string() } else { format!("{f} ({step})") }));
    let mut t = table(&headers.iter().map(String::as_str).collect::<Vec<_>>());
    let mut points: Vec<&Row> = Vec::new();
    for r in rows {
        if !points.iter().any(|p| p.key == r.key) {
            points.push(r);
        }
    }
    for p in points {
        let mut cells: Vec<String> = factors.iter().map(|f| p.value(f)).collect();
        cells.push(p.device.clone());
        for (step, figure) in &columns {
            let cell = p.sibling(rows, step, figure);
            cells.push(cell.map_or(String::new(), |r| {
                let v = r.summary().p50;
                match r.unit {
                    Unit::Ms => ms(v),
                    Unit::Ratio => format!("{:.1}%", v * 100.0),
                    _ => format!("{v:.0}"),
                }
            }));
        }
        t.add_row(cells);
    }
    println!("{t}");
    // The laws of the main time, each page's load and each interaction; every figure's
    // are on the --html page.
    let main: Vec<&str> = MAIN_TIMES.into_iter().chain(["loadMs", "interactionBrowserMs"]).collect();
    for factor in &factors {
        let mut figures: Vec<(&str, &str)> = Vec::new();
        for r in rows.iter().filter(|r| main.contains(&r.figure.as_str())) {
            if !figures.contains(&(r.step.as_str(), r.figure.as_str())) {
                figures.push((&r.step, &r.figure));
            }
        }
        for (step, figure) in figures {
            let of: Vec<&Row> = rows.iter().filter(|r| r.step == step && r.figure == figure).collect();
            if !lawful(&of, factor) {
                continue;
            }
            for (label, _, fit) in fits(&of, factor, &factors) {
                let Some(fit) = fit else { continue };
                let on = if label.is_empty() { String::new() } else { format!(" ({label})") };
                let step = if step.is_empty() { String::new() } else { format!(" [{step}]") };
                println!("{figure}{step} ∝ {}^k{on}: {}", axis_title(factor), fit.label());
            }
        }
    }
}

/// What the job measured, as the report's tables (also under `get`, `watch`, `submit --wait`).
pub fn measured(job: &Job) {
    match job.result.as_ref().and_then(|r| r.kind.as_ref()) {
        Some(job_result::Kind::Gpt2Train(r)) => train(r),
        Some(job_result::Kind::Gpt2Infer(r)) => infer(r),
        Some(job_result::Kind::Browser(r)) => browser(r),
        Some(job_result::Kind::Sleep(s)) => println!("slept {} ms", s.slept_ms),
        Some(job_result::Kind::Noop(_)) => println!("noop"),
        None => println!("no result"),
    }
}

fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// A horizontal bar, `width` cells for `max`.
fn bar(value: f64, max: f64, width: usize) -> String {
    if max <= 0.0 || !value.is_finite() {
        return String::new();
    }
    let eighths = ((value / max).clamp(0.0, 1.0) * (width * 8) as f64).round() as usize;
    let partial = ["", "▏", "▎", "▍", "▌", "▋", "▊", "▉"];
    format!("{}{}", "█".repeat(eighths / 8), partial[eighths % 8])
}

/// A one-line plot of a series (e.g. the loss per step).
fn sparkline(values: &[f64]) -> String {
    let (lo, hi) = values.iter().fold((f64::MAX, f64::MIN), |(l, h), v| (l.min(*v), h.max(*v)));
    let ticks = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    values
        .iter()
        .map(|v| if hi > lo { ticks[(((v - lo) / (hi - lo)) * 7.0).round() as usize] } else { ticks[3] })
        .collect()
}

fn config_line(c: &Gpt2RunConfig) -> String {
    format!(
        "{} ({:.1}M parameters), {} on {} ({}), {} torch threads of {} cores, seed {}, torch {}, tch {}",
        c.model,
        c.parameters as f64 / 1e6,
        c.dtype,
        c.device,
        c.device_name,
        c.torch_threads,
        c.cpu_cores,
        c.seed,
        c.torch_version,
        c.tch_version
    )
}

fn phase_rows(t: &mut Table, rows: &[(&str, Option<&PhaseStats>)]) {
    let max = rows.iter().filter_map(|(_, p)| p.map(|p| p.p50_ms)).fold(0.0, f64::max);
    for (name, stats) in rows {
        let Some(p) = stats else { continue };
        t.add_row([
            name.to_string(),
            p.count.to_string(),
            ms(p.mean_ms),
            ms(p.p50_ms),
            ms(p.p90_ms),
            ms(p.p99_ms),
            ms(p.min_ms),
            ms(p.max_ms),
            bar(p.p50_ms, max, 20),
        ]);
    }
}

fn train(r: &Gpt2TrainReport) {
    if let Some(c) = &r.config {
        println!("{}", config_line(c));
    }
    let mut t = table(&["phase (ms)", "count", "mean", "p50", "p90", "p99", "min", "max", "p50"]);
    phase_rows(
        &mut t,
        &[
            ("data", r.data.as_ref()),
            ("forward (+ loss)", r.forward.as_ref()),
            ("backward", r.backward.as_ref()),
            ("optimizer (clip + update)", r.optimizer.as_ref()),
            ("step (whole)", r.step.as_ref()),
        ],
    );
    println!("{t}");
    println!(
        "tokensPerS {:.0} · achievedFlopsPerS {:.2} GFLOP/s · mfu {:.1}% of peakFlopsPerS {:.1} GFLOP/s ({}) · peakMemoryBytes {:.0} MiB ({})",
        r.tokens_per_s,
        r.achieved_flops_per_s / 1e9,
        r.mfu * 100.0,
        r.peak_flops_per_s / 1e9,
        r.peak_source,
        r.peak_memory_bytes as f64 / (1 << 20) as f64,
        r.peak_memory_source
    );
    if let (Some(first), Some(last)) = (r.loss.first(), r.loss.last()) {
        println!("loss {first:.3} → {last:.3}  {}", sparkline(&r.loss));
    }
}

fn infer(r: &Gpt2InferReport) {
    if let Some(c) = &r.config {
        println!("{}", config_line(c));
    }
    let mut t = table(&["figure (ms)", "count", "mean", "p50", "p90", "p99", "min", "max", "p50"]);
    phase_rows(&mut t, &[("tpot (time per output token)", r.tpot.as_ref())]);
    println!("{t}");
    println!(
        "ttftMs {} (time to first token) · tokensPerS {:.1} · promptTokens {} · totalMs {}",
        ms(r.ttft_ms),
        r.tokens_per_s,
        r.prompt_tokens,
        ms(r.total_ms)
    );
    for (i, g) in r.generations.iter().enumerate() {
        println!("[{i}] {:?}", g.text);
    }
}

fn browser(r: &BrowserReport) {
    println!("{} {} · {} mode · {} repeat(s)", r.browser, r.browser_version, r.mode, r.repeats.len());
    // Bars compare times; counts and bytes get none.
    let is_time = |figure: &str| figure.ends_with("Ms");
    let max = r.summary.iter().filter(|f| is_time(&f.figure)).map(|f| f.median).fold(0.0, f64::max);
    let mut t = table(&["step", "figure", "count", "median", "p90", "min", "max", "median"]);
    for f in &r.summary {
        let time = is_time(&f.figure);
        let show = |v: f64| if time { ms(v) } else { format!("{v:.0}") };
        let step = if f.step.is_empty() { "(scenario)" } else { f.step.as_str() };
        t.add_row([
            step.to_string(),
            f.figure.clone(),
            f.count.to_string(),
            show(f.median),
            show(f.p90),
            show(f.min),
            show(f.max),
            if time { bar(f.median, max, 20) } else { String::new() },
        ]);
    }
    println!("{t}");
    if let Some(f) = &r.failure {
        println!(
            "failed at step {} {:?} (repeat {}): {} — page {} — screenshot {} bytes — console errors: {}",
            f.step_number,
            f.step_name,
            f.repeat,
            f.reason,
            f.page_url,
            f.screenshot_png.len(),
            if f.console_errors.is_empty() { "none".to_string() } else { f.console_errors.join("; ") }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plots_scale_to_their_range() {
        assert_eq!(bar(10.0, 10.0, 4), "████");
        assert_eq!(bar(5.0, 10.0, 4), "██");
        assert_eq!(bar(1.0, 8.0, 1), "▏");
        assert_eq!(sparkline(&[3.0, 2.0, 1.0]), "█▅▁");
    }
}
